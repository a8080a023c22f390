// Three stompede nodes on one real Redis; @stomp/stompjs clients spread over
// them resume from their last x-offset/x-epoch when they reconnect. One node
// is killed with SIGKILL while comments are published at a steady rate: its
// clients reconnect to the other two, and every client ends with every
// comment, once, in order.
import { test, after, before } from 'node:test';
import assert from 'node:assert/strict';
import { Client } from '@stomp/stompjs';
import WebSocket from 'ws';
import { startBroker, startRedis } from './broker.mjs';

const DESTINATION = '/topic/comments.failover';
const COMMENTS = 60;
const KILL_AFTER = 20;
const RATE_PER_SECOND = 20;

let redis;
const nodes = [];
const dead = new Set();

async function waitFor(condition, what, timeoutMs = 20000) {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

before(async () => {
  redis = await startRedis();
  for (const id of ['a', 'b', 'c']) {
    nodes.push(await startBroker(['--engine', 'redis', '--redis-url', redis.url, '--node-id', id]));
  }
  for (const node of nodes) {
    await waitFor(async () => (await (await fetch(node.apiUrl.replace('/api/v1', '/readyz'))).json()).engine.up, 'engine up');
  }
});

after(async () => {
  for (const [index, node] of nodes.entries()) {
    if (!dead.has(index)) assert.equal(await node.stop(), 0, 'a node exits 0 on SIGTERM');
  }
  await redis.stop();
});

const alive = () => nodes.filter((_, index) => !dead.has(index));

/**
 * What a comment page does: connect to a node (as a load balancer would
 * pick one, skipping dead ones), subscribe, and on every reconnect resume
 * from the last offset and epoch seen.
 */
function reader(first) {
  const state = { bodies: [], offsets: [], receipts: [], last: null, connects: 0 };
  let turn = first;
  const client = new Client({
    webSocketFactory: () => {
      const choices = alive();
      return new WebSocket(choices[turn++ % choices.length].wsUrl, ['v12.stomp']);
    },
    reconnectDelay: 200,
    heartbeatIncoming: 0,
    heartbeatOutgoing: 0,
    onConnect: () => {
      state.connects += 1;
      const headers = { receipt: `sub-${state.connects}` };
      if (state.last) {
        headers['x-since-offset'] = String(state.last.offset);
        headers['x-since-epoch'] = state.last.epoch;
      }
      client.watchForReceipt(headers.receipt, (receipt) => state.receipts.push(receipt.headers));
      client.subscribe(
        DESTINATION,
        (message) => {
          state.last = { offset: Number(message.headers['x-offset']), epoch: message.headers['x-epoch'] };
          state.offsets.push(state.last.offset);
          state.bodies.push(message.body);
        },
        headers,
      );
    },
  });
  client.activate();
  return { client, state };
}

/** Publishes on a live node; a node that died mid-request is retried on another with the same Idempotency-Key. */
async function publish(n) {
  for (let attempt = 0; attempt < 10; attempt++) {
    const choices = alive();
    const node = choices[(n + attempt) % choices.length];
    try {
      const response = await fetch(`${node.apiUrl}/publish`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'idempotency-key': `comment-${n}` },
        body: JSON.stringify({ destination: DESTINATION, body: `comment ${n}` }),
        signal: AbortSignal.timeout(3000),
      });
      if (response.status === 202) return;
    } catch {
      // The node died under the request: try another.
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  throw new Error(`comment ${n} could not be published`);
}

test('a node killed while comments flow: its stompjs readers resume on the others with every comment, once, in order', async () => {
  const readers = [0, 1, 2, 0, 1, 2].map((first) => reader(first));
  await waitFor(() => readers.every(({ state }) => state.receipts.length === 1), 'every reader subscribed');
  const onKilled = readers.filter((_, index) => index % 3 === 0);

  for (let n = 1; n <= COMMENTS; n++) {
    if (n === KILL_AFTER + 1) {
      dead.add(0);
      await nodes[0].kill();
    }
    await publish(n);
    await new Promise((resolve) => setTimeout(resolve, 1000 / RATE_PER_SECOND));
  }

  await waitFor(() => readers.every(({ state }) => state.bodies.length >= COMMENTS), 'every reader has every comment');
  const expected = Array.from({ length: COMMENTS }, (_, i) => `comment ${i + 1}`);
  for (const [index, { state }] of readers.entries()) {
    assert.deepEqual(state.bodies, expected, `reader ${index}: every comment, once, in order`);
    assert.deepEqual(state.offsets, expected.map((_, i) => i + 1), `reader ${index}: offsets 1..${COMMENTS}`);
  }
  for (const { state } of onKilled) {
    assert.ok(state.connects >= 2, 'the killed node\'s readers reconnected');
    const resumed = state.receipts.at(-1);
    assert.equal(resumed['x-recovered'], 'true', JSON.stringify(state.receipts));
  }
  await Promise.all(readers.map(({ client }) => client.deactivate()));
});
