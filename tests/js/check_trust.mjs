// Element's engine (matrix-js-sdk with Rust crypto), headless: does it trust PeerBot's device?
//
// Input: one JSON object, as argv[2] or the first line of stdin:
//   {homeserver, user_id, password | access_token (+ device_id), bot_user_id, bot_device_id,
//    room_id?, expect_event_id?, thread_root?, interactive?: bool, timeout_ms?}
// The script logs in, starts Rust crypto (in-memory store), sets up its user's own cross-signing
// (the password answers the server's confirmation), turns on "exclude insecure devices"
// (OnlySignedDevicesIsolationMode) and checks the bot's device.
//
// One-shot (interactive false): optionally joins room_id and waits for expect_event_id, then
// prints one JSON result line and exits (0 when ok).
// Interactive: prints {"step": "ready", ...} and then reads one JSON command per stdin line:
//   {"cmd": "create_room", "invite": [user ids]}       -> {"step": "room", "room_id"}
//   {"cmd": "join", "room_id"}                         -> {"step": "joined", "room_id"}
//   {"cmd": "send", "room_id", "body", "wait_member"?} -> {"step": "sent", "event_id"}
//   {"cmd": "expect", "room_id", "event_id", "thread_root"?, "decrypt_timeout_ms"?}
//                                                      -> {"step": "seen", ...}
//   {"cmd": "check_device"}                            -> {"step": "device", ...}
//   {"cmd": "pin_identity"} (accept the bot's new identity) -> {"step": "pinned", ...}
//   {"cmd": "quit"}                                    -> the final result line, exit
// Every stdout line is one JSON object; the last one has "ok". Library logs go to stderr.

import { createInterface } from "node:readline";

// matrix-js-sdk and the Rust crypto log through console: keep stdout for our JSON lines.
const out = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");
console.log = console.info = console.debug = console.warn = (...args) => console.error(...args);

const sdk = await import("matrix-js-sdk");
const { OnlySignedDevicesIsolationMode, EventShieldColour, EventShieldReason } = await import(
  "matrix-js-sdk/lib/crypto-api/index.js"
);
const { logger } = await import("matrix-js-sdk/lib/logger.js");
logger.setLevel(process.env.MATRIX_JS_LOG_LEVEL ?? "warn");

const started = Date.now();
const elapsed = () => Date.now() - started;
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

const lines = createInterface({ input: process.stdin, terminal: false })[Symbol.asyncIterator]();
async function nextJson() {
  const { value, done } = await lines.next();
  if (done) return null;
  return value.trim() ? JSON.parse(value) : nextJson();
}

async function waitFor(what, check, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(50);
  }
}

const config = process.argv[2] ? JSON.parse(process.argv[2]) : await nextJson();
const timeoutMs = config.timeout_ms ?? 20000;
const result = { ok: false, steps: [] };
const step = (name, extra = {}) => {
  const entry = { step: name, ms: elapsed(), ...extra };
  result.steps.push(entry);
  return entry;
};

let client;
try {
  // --- log in (a fresh device each run; its crypto store lives in memory) ---
  let accessToken = config.access_token;
  let deviceId = config.device_id;
  if (!accessToken) {
    const bare = sdk.createClient({ baseUrl: config.homeserver });
    const login = await bare.loginRequest({
      type: "m.login.password",
      identifier: { type: "m.id.user", user: config.user_id },
      password: config.password,
      initial_device_display_name: "matrix-js-sdk check",
    });
    accessToken = login.access_token;
    deviceId = login.device_id;
  }
  client = sdk.createClient({
    baseUrl: config.homeserver,
    userId: config.user_id,
    deviceId,
    accessToken,
  });
  await client.initRustCrypto({ useIndexedDB: false });
  const crypto = client.getCrypto();
  step("logged_in", { device_id: deviceId });

  // --- the user's own cross-signing, as Element sets it up for its users ---
  await crypto.bootstrapCrossSigning({
    authUploadDeviceSigningKeys: async (makeRequest) => {
      try {
        return await makeRequest(null); // Synapse takes a first upload without a password
      } catch (error) {
        const session = error?.data?.session;
        if (!session || !config.password) throw error;
        return await makeRequest({
          type: "m.login.password",
          identifier: { type: "m.id.user", user: config.user_id },
          password: config.password,
          session,
        });
      }
    },
  });
  step("cross_signing", { ready: await crypto.isCrossSigningReady() });

  // "Exclude insecure devices": keys only go to, and are only taken from, owner-signed devices.
  crypto.setDeviceIsolationMode(new OnlySignedDevicesIsolationMode());

  // Seen events, by ID, however they arrive (main timeline or a thread).
  const seen = new Map();
  client.on(sdk.ClientEvent.Event, (event) => seen.set(event.getId(), event));
  client.on(sdk.RoomEvent.Timeline, (event) => seen.set(event.getId(), event));

  await client.startClient({ threadSupport: true, initialSyncLimit: 20 });
  await waitFor(
    "the first sync",
    () => ["PREPARED", "SYNCING"].includes(client.getSyncState()),
    timeoutMs,
  );
  step("synced");

  // The Rust crypto only knows the devices of users it tracks (users sharing an encrypted room
  // with us): before that, getDeviceVerificationStatus is null. With `wait`, poll until known.
  async function checkDevice(wait = false) {
    const status = await waitFor(
      `the keys of ${config.bot_user_id}`,
      () => crypto.getDeviceVerificationStatus(config.bot_user_id, config.bot_device_id),
      wait ? timeoutMs : 0,
    ).catch(() => null);
    const identity = await crypto.getUserVerificationStatus(config.bot_user_id);
    return {
      known: status !== null,
      signed_by_owner: status?.signedByOwner ?? false,
      cross_signing_verified: status?.crossSigningVerified ?? false,
      locally_verified: status?.localVerified ?? false,
      identity_verified: identity.isVerified(),
      identity_needs_approval: identity.needsUserApproval,
    };
  }
  result.device = await checkDevice();
  step("device", result.device);

  async function join(roomId) {
    await waitFor(`the invite to ${roomId}`, () => client.getRoom(roomId), timeoutMs);
    if (client.getRoom(roomId).getMyMembership() !== "join") await client.joinRoom(roomId);
    await waitFor(
      `our join of ${roomId}`,
      () => client.getRoom(roomId)?.getMyMembership() === "join",
      timeoutMs,
    );
  }

  async function expect(roomId, eventId, threadRoot, decryptTimeoutMs = timeoutMs) {
    const event = await waitFor(`event ${eventId}`, () => seen.get(eventId), timeoutMs);
    await client.decryptEventIfNeeded(event);
    // The first decryption may wait for the room key's to-device message: give it time.
    await waitFor(
      `the decryption of ${eventId}`,
      async () => {
        if (!event.isDecryptionFailure() && event.getType() !== "m.room.encrypted") return true;
        await client.decryptEventIfNeeded(event, { isRetry: true });
        return false;
      },
      decryptTimeoutMs,
    ).catch(() => {});
    const info = event.isEncrypted() ? await crypto.getEncryptionInfoForEvent(event) : null;
    const seenEntry = {
      event_id: eventId,
      sender: event.getSender(),
      encrypted: event.isEncrypted(),
      decrypted: !event.isDecryptionFailure() && event.getType() !== "m.room.encrypted",
      decryption_failure: event.isDecryptionFailure() ? String(event.decryptionFailureReason) : null,
      type: event.getType(),
      body: event.getContent()?.body ?? null,
      shield_colour: info ? EventShieldColour[info.shieldColour] : null,
      shield_reason: info?.shieldReason == null ? null : EventShieldReason[info.shieldReason],
    };
    if (threadRoot) {
      const room = client.getRoom(roomId);
      const thread = await waitFor(`thread ${threadRoot}`, () => room.getThread(threadRoot), timeoutMs)
        .catch(() => null);
      const inThread = thread
        ? await waitFor(`${eventId} in thread`, () => thread.findEventById(eventId), timeoutMs)
            .then(() => true)
            .catch(() => false)
        : false;
      Object.assign(seenEntry, {
        thread_root_id: event.threadRootId ?? null,
        thread_found: Boolean(thread),
        in_thread: inThread,
      });
    }
    return seenEntry;
  }

  let ok = true;
  if (config.interactive) {
    out(step("ready", { device_id: deviceId, device: result.device }));
    for (;;) {
      const command = await nextJson();
      if (command === null || command.cmd === "quit") break;
      try {
        if (command.cmd === "create_room") {
          const { room_id } = await client.createRoom({
            invite: command.invite ?? [],
            initial_state: [
              {
                type: "m.room.encryption",
                state_key: "",
                content: { algorithm: "m.megolm.v1.aes-sha2" },
              },
            ],
          });
          await waitFor("the new room", () => client.getRoom(room_id), timeoutMs);
          out(step("room", { room_id }));
        } else if (command.cmd === "join") {
          await join(command.room_id);
          out(step("joined", { room_id: command.room_id }));
        } else if (command.cmd === "send") {
          if (command.wait_member) {
            await waitFor(
              `${command.wait_member} joined`,
              () =>
                client.getRoom(command.room_id)?.getMember(command.wait_member)?.membership ===
                "join",
              timeoutMs,
            );
          }
          const { event_id } = await client.sendMessage(command.room_id, {
            msgtype: "m.text",
            body: command.body,
          });
          out(step("sent", { event_id }));
        } else if (command.cmd === "expect") {
          const entry = await expect(
            command.room_id,
            command.event_id,
            command.thread_root,
            command.decrypt_timeout_ms,
          );
          result.seen = entry;
          out(step("seen", entry));
        } else if (command.cmd === "pin_identity") {
          // What Element's "OK" on an identity-change warning does.
          await crypto.pinCurrentUserIdentity(config.bot_user_id);
          result.device = await checkDevice(true);
          out(step("pinned", result.device));
        } else if (command.cmd === "check_device") {
          result.device = await checkDevice(true);
          out(step("device", result.device));
        } else {
          out(step("error", { error: `unknown command ${command.cmd}` }));
        }
      } catch (error) {
        ok = false;
        out(step("error", { cmd: command.cmd, error: String(error?.stack ?? error) }));
      }
    }
  } else if (config.room_id) {
    await join(config.room_id);
    result.device = await checkDevice(true);
    step("device", result.device);
    ok = result.device.signed_by_owner;
    if (config.expect_event_id) {
      result.seen = await expect(config.room_id, config.expect_event_id, config.thread_root);
      ok = ok && result.seen.decrypted && result.seen.shield_colour === "NONE";
    }
  } else {
    ok = false;
    result.error = "give room_id (a room shared with the bot) or interactive: true";
  }
  result.ok = ok;
} catch (error) {
  result.error = String(error?.stack ?? error);
} finally {
  result.ms = elapsed();
  client?.stopClient();
  out(result);
  // The Rust crypto and the HTTP agent keep handles open: leave explicitly.
  process.exit(result.ok ? 0 : 1);
}
