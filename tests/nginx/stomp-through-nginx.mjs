// One STOMP session over wss:// through nginx to stompede, with @stomp/stompjs.
//
//   node stomp-through-nginx.mjs WSS_URL STOMPEDE_API_URL API_TOKEN IDLE_MS
//
// Checks: the handshake went through nginx (Server header) with TLS and the
// v12.stomp subprotocol; CONNECTED; SUBSCRIBE acknowledged by a RECEIPT; the
// connection stays up while idle for IDLE_MS (longer than nginx's shortened
// proxy_read_timeout: heart-beats keep it alive); a comment published to
// stompede's HTTP API arrives; DISCONNECT gets its RECEIPT. Exits 0 on
// success, 1 with a message otherwise, and never runs longer than 30 s + IDLE_MS.
import { Client } from '@stomp/stompjs';
import WebSocket from 'ws';
import { isDeepStrictEqual } from 'node:util';

const [wssUrl, apiUrl, token, idleArg] = process.argv.slice(2);
const idleMs = Number(idleArg || 0);
const destination = '/topic/comments.nginx-test';
const deadline = setTimeout(() => fail(`timed out at step: ${step}`), 30000 + idleMs);
let step = 'connecting';
let handshake = null;
let closes = 0;

function fail(message) {
  console.error(`nginx test: FAIL: ${message}`);
  process.exit(1);
}
function ok(message) {
  console.log(`ok - ${message}`);
}
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const expect = (condition, message) => (condition ? ok(message) : fail(message));

const client = new Client({
  webSocketFactory: () => {
    const ws = new WebSocket(wssUrl, ['v12.stomp', 'v11.stomp', 'v10.stomp'], {
      rejectUnauthorized: false, // the test's certificate is self-signed
    });
    ws.on('upgrade', (response) => {
      handshake = { server: response.headers.server ?? '', protocol: response.headers['sec-websocket-protocol'] ?? '' };
    });
    return ws;
  },
  heartbeatIncoming: 1000,
  heartbeatOutgoing: 1000,
  reconnectDelay: 0, // one session: a drop is a failure, not something to retry
  connectionTimeout: 10000,
  onWebSocketClose: (event) => {
    closes += 1;
    if (step !== 'disconnecting' && step !== 'done') fail(`WebSocket closed during ${step} (code ${event.code})`);
  },
  onStompError: (frame) => fail(`ERROR frame: ${frame.headers.message}`),
});

const connected = new Promise((resolve) => { client.onConnect = resolve; });
client.activate();
const frame = await connected;
expect(handshake?.server.startsWith('nginx'), `handshake answered through nginx (Server: ${handshake?.server})`);
expect(handshake?.protocol === 'v12.stomp', `subprotocol v12.stomp negotiated through the proxy (${handshake?.protocol})`);
expect(frame.command === 'CONNECTED' && frame.headers.version === '1.2', `CONNECTED, version ${frame.headers.version}, heart-beat ${frame.headers['heart-beat']}`);

step = 'subscribing';
const messages = [];
let onMessage = () => {};
const subscribed = new Promise((resolve) => client.watchForReceipt('sub-receipt', resolve));
client.subscribe(destination, (message) => { messages.push(message); onMessage(); }, { id: 'comments', receipt: 'sub-receipt' });
await subscribed;
ok('SUBSCRIBE acknowledged with RECEIPT');

if (idleMs > 0) {
  step = 'idle';
  await sleep(idleMs);
  expect(client.connected && closes === 0, `still connected after ${idleMs} ms idle (heart-beats through the proxy)`);
}

step = 'publishing';
const comment = { id: 1, author: 'nginx', text: 'Hello through TLS' };
const arrived = new Promise((resolve) => { onMessage = resolve; });
const response = await fetch(`${apiUrl}/api/v1/publish`, {
  method: 'POST',
  headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` },
  body: JSON.stringify({ destination, body: comment }),
});
const published = await response.json();
expect(response.status === 202 && published.subscribers === 1, `published to 1 subscriber (${response.status} ${JSON.stringify(published)})`);
await arrived;
const message = messages[0];
expect(message.headers.destination === destination && message.headers['content-type'] === 'application/json', 'MESSAGE on the destination, content-type application/json');
expect(isDeepStrictEqual(JSON.parse(message.body), comment), `the comment arrived intact: ${message.body}`);

step = 'disconnecting';
const receipt = new Promise((resolve) => { client.onDisconnect = resolve; });
await client.deactivate();
const receiptFrame = await Promise.race([receipt, sleep(5000).then(() => null)]);
expect(receiptFrame?.command === 'RECEIPT' && receiptFrame.headers['receipt-id'], `DISCONNECT answered with RECEIPT (receipt-id ${receiptFrame?.headers['receipt-id']})`);
step = 'done';
clearTimeout(deadline);
console.log('nginx test: passed');
