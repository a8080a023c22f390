// A real third-party client: @stomp/stompjs (with the ws package as its
// WebSocket) against a stompede binary.
import { test, after, before } from 'node:test';
import assert from 'node:assert/strict';
import { Client } from '@stomp/stompjs';
import WebSocket from 'ws';
import { startBroker } from './broker.mjs';

const MiB = 1024 * 1024;
let broker;

before(async () => {
  broker = await startBroker(['--max-frame-bytes', String(2 * MiB), '--max-request-bytes', String(4 * MiB)]);
});

after(async () => {
  const code = await broker.stop();
  assert.equal(code, 0, 'the broker exits 0 on SIGTERM');
});

function connect(url) {
  return new Promise((resolve, reject) => {
    const client = new Client({
      webSocketFactory: () => new WebSocket(url, ['v12.stomp', 'v11.stomp', 'v10.stomp']),
      reconnectDelay: 0,
      heartbeatIncoming: 10000,
      heartbeatOutgoing: 10000,
      onConnect: (frame) => resolve({ client, connected: frame }),
      onStompError: (frame) => reject(new Error(frame.headers.message)),
      onWebSocketError: (event) => reject(new Error(`websocket error ${event.message || event}`)),
    });
    client.activate();
  });
}

async function publish(request) {
  const response = await fetch(`${broker.apiUrl}/publish`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(request),
  });
  const body = await response.json();
  assert.equal(response.status, 202, JSON.stringify(body));
  return body;
}

async function subscriberCount(destination) {
  const response = await fetch(`${broker.apiUrl}/destinations/${encodeURIComponent(destination)}`);
  return (await response.json()).subscribers;
}

/** A queue of received messages that a test can await one by one. */
function inbox() {
  const messages = [];
  const waiters = [];
  return {
    push(message) {
      const waiter = waiters.shift();
      if (waiter) waiter(message);
      else messages.push(message);
    },
    next(timeoutMs = 5000) {
      if (messages.length) return Promise.resolve(messages.shift());
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error('no message in time')), timeoutMs);
        waiters.push((message) => {
          clearTimeout(timer);
          resolve(message);
        });
      });
    },
  };
}

test('stompjs subscribes, receives every kind of body, unsubscribes and disconnects', async () => {
  const { client, connected } = await connect(broker.wsUrl);
  assert.equal(connected.headers.version, '1.2');

  const destination = '/topic/comments.42';
  const received = inbox();
  const subscribed = new Promise((resolve) => client.watchForReceipt('sub-receipt', resolve));
  const subscription = client.subscribe(destination, (message) => received.push(message), {
    receipt: 'sub-receipt',
  });
  const receipt = await subscribed;
  assert.equal(receipt.headers['receipt-id'], 'sub-receipt');
  assert.equal(await subscriberCount(destination), 1);

  // A comment, as the comment API posts it.
  const published = await publish({ destination, body: 'First comment!' });
  assert.equal(published.subscribers, 1);
  let message = await received.next();
  assert.equal(message.body, 'First comment!');
  assert.equal(message.headers['message-id'], published.message_id);
  assert.equal(message.headers['content-type'], 'text/plain;charset=utf-8');
  assert.equal(message.headers.subscription, subscription.id);

  // A JSON body.
  await publish({ destination, body: { id: 7, author: 'ann', text: 'hi' } });
  message = await received.next();
  assert.equal(message.headers['content-type'], 'application/json');
  assert.deepEqual(JSON.parse(message.body), { id: 7, author: 'ann', text: 'hi' });

  // Non-ASCII UTF-8.
  const text = 'Grüße, 世界 — ünïcödé 👋';
  await publish({ destination, body: text });
  message = await received.next();
  assert.equal(message.body, text);

  // A binary body (not valid UTF-8): a binary WebSocket frame.
  const bytes = Buffer.from([0xff, 0x00, 0xfe, 0x10, 0x80]);
  await publish({ destination, body_base64: bytes.toString('base64') });
  message = await received.next();
  assert.equal(message.isBinaryBody, true);
  assert.deepEqual(Buffer.from(message.binaryBody), bytes);
  assert.equal(message.headers['content-type'], 'application/octet-stream');

  // A 1 MiB body (max-frame-bytes was raised for this broker).
  const big = 'c'.repeat(MiB);
  await publish({ destination, body: big });
  message = await received.next();
  assert.equal(message.body.length, MiB);
  assert.equal(message.body, big);

  subscription.unsubscribe();
  // UNSUBSCRIBE carries no receipt in stompjs; wait for the count to drop.
  for (let i = 0; i < 100 && (await subscriberCount(destination)) !== 0; i++) {
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  assert.equal(await subscriberCount(destination), 0);
  assert.equal((await publish({ destination, body: 'nobody' })).subscribers, 0);

  // deactivate() sends DISCONNECT with a receipt and waits for it.
  const disconnected = new Promise((resolve) => {
    client.onDisconnect = resolve;
  });
  await client.deactivate();
  const disconnectReceipt = await disconnected;
  assert.equal(disconnectReceipt.command, 'RECEIPT');
});

async function waitFor(condition, what, timeoutMs = 5000) {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

test('stompjs resumes after its TCP connection is cut: exactly the comments it missed, then live ones', async () => {
  const destination = '/topic/comments.resume';
  const received = inbox();
  const receipts = inbox();
  // What a comment page keeps: the last offset and epoch it saw.
  let last = null;
  let connects = 0;
  // Holds the reconnect back until the test has published what it should miss.
  let gate = Promise.resolve();
  const client = new Client({
    webSocketFactory: () => new WebSocket(broker.wsUrl, ['v12.stomp']),
    reconnectDelay: 100,
    beforeConnect: async () => {
      await gate;
    },
    onConnect: () => {
      connects += 1;
      const headers = { receipt: `subscribed-${connects}` };
      if (last) {
        headers['x-since-offset'] = String(last.offset);
        headers['x-since-epoch'] = last.epoch;
      }
      client.watchForReceipt(headers.receipt, (frame) => receipts.push(frame));
      client.subscribe(
        destination,
        (message) => {
          last = { offset: Number(message.headers['x-offset']), epoch: message.headers['x-epoch'] };
          received.push(message);
        },
        headers,
      );
    },
  });
  client.activate();
  const first = await receipts.next();
  assert.equal(first.headers['x-offset'], '0');
  for (let n = 1; n <= 10; n++) await publish({ destination, body: `comment ${n}` });
  for (let n = 1; n <= 10; n++) {
    const message = await received.next();
    assert.equal(message.body, `comment ${n}`);
    assert.equal(message.headers['x-offset'], String(n));
  }

  // The socket dies under the client: no DISCONNECT, no close frame.
  let reopen;
  gate = new Promise((resolve) => {
    reopen = resolve;
  });
  client.webSocket._socket.destroy();
  await waitFor(async () => (await subscriberCount(destination)) === 0, 'the broker to drop the reader');
  for (let n = 11; n <= 30; n++) await publish({ destination, body: `comment ${n}` });
  reopen();

  const resumed = await receipts.next();
  assert.equal(resumed.headers['x-recovered'], 'true', JSON.stringify(resumed.headers));
  assert.equal(resumed.headers['x-offset'], '30');
  for (let n = 11; n <= 30; n++) {
    const message = await received.next();
    assert.equal(message.body, `comment ${n}`, 'every missed comment, once, in order');
  }
  await publish({ destination, body: 'comment 31' });
  const live = await received.next();
  assert.equal(live.body, 'comment 31');
  assert.equal(live.headers['x-offset'], '31');
  assert.equal(connects, 2);
  await client.deactivate();
  await assert.rejects(received.next(200), /no message in time/, 'nothing twice');
});
