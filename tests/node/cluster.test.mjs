// Three stompede nodes on one real Redis (the redis engine), with
// @stomp/stompjs clients spread over the three: a comment published on any
// node reaches every client on every node exactly once, with identical
// headers and body, and reader counts are cluster-wide.
import { test, after, before } from 'node:test';
import assert from 'node:assert/strict';
import { Client } from '@stomp/stompjs';
import WebSocket from 'ws';
import { startBroker, startRedis } from './broker.mjs';

let redis;
let nodes = [];

before(async () => {
  redis = await startRedis();
  for (const id of ['a', 'b', 'c']) {
    nodes.push(
      await startBroker(['--engine', 'redis', '--redis-url', redis.url, '--node-id', id, '--reader-count-interval', '0.1']),
    );
  }
  for (const node of nodes) {
    await waitFor(async () => (await (await fetch(node.apiUrl.replace('/api/v1', '/readyz'))).json()).engine.up, 'engine up');
  }
});

after(async () => {
  for (const node of nodes) assert.equal(await node.stop(), 0, 'a node exits 0 on SIGTERM');
  await redis.stop();
});

async function waitFor(condition, what) {
  const deadline = Date.now() + 10000;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/** A stompjs client subscribed (receipt confirmed) to `destination` on `node`. */
function subscriber(node, destination) {
  return new Promise((resolve, reject) => {
    const messages = [];
    const client = new Client({
      webSocketFactory: () => new WebSocket(node.wsUrl, ['v12.stomp']),
      reconnectDelay: 0,
      onStompError: (frame) => reject(new Error(frame.headers.message)),
      onConnect: () => {
        client.watchForReceipt('sub', () => resolve({ client, messages }));
        client.subscribe(destination, (message) => messages.push(message), { receipt: 'sub' });
      },
    });
    client.activate();
  });
}

async function post(node, route, request, headers = {}) {
  const response = await fetch(`${node.apiUrl}/${route}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: JSON.stringify(request),
  });
  return { status: response.status, body: await response.json() };
}

test('a comment published on one node reaches stompjs clients on all three, once, identical', async () => {
  const readers = [];
  for (const node of nodes) {
    for (let i = 0; i < 3; i++) readers.push(await subscriber(node, '/topic/comments.9'));
  }
  const comment = { id: 12345678901234567890123, text: 'Grüße, 世界', z: 1, a: 2 };
  const { status, body } = await post(nodes[1], 'publish', {
    destination: '/topic/comments.9',
    body: comment,
    headers: { 'x-article': '9' },
  });
  assert.equal(status, 202, JSON.stringify(body));

  await waitFor(async () => readers.every((reader) => reader.messages.length >= 1), 'every reader got the comment');
  const first = readers[0].messages[0];
  for (const { messages } of readers) {
    const [message] = messages;
    assert.equal(message.headers['message-id'], body.message_id);
    assert.equal(message.headers['x-article'], '9');
    assert.equal(message.headers['content-type'], 'application/json');
    assert.equal(message.body, first.body, 'the same bytes on every node');
  }

  // Exactly once: after a second comment from a third node, each reader has two.
  assert.equal((await post(nodes[2], 'publish', { destination: '/topic/comments.9', body: 'second' })).status, 202);
  await waitFor(async () => readers.every((reader) => reader.messages.length >= 2), 'the second comment');
  await new Promise((resolve) => setTimeout(resolve, 200));
  for (const { messages } of readers) {
    assert.deepEqual(messages.map((message) => message.body).slice(1), ['second']);
    assert.equal(messages.length, 2);
  }

  // A broadcast from node a reaches every reader of both destinations.
  const other = await subscriber(nodes[2], '/topic/comments.10');
  const broadcast = await post(nodes[0], 'broadcast', { destinations: ['/topic/comments.9', '/topic/comments.10'], body: 'all' });
  assert.equal(broadcast.status, 202);
  await waitFor(async () => [...readers, other].every((reader) => reader.messages.some((m) => m.body === 'all')), 'the broadcast');

  // The count is cluster-wide on every node.
  for (const node of nodes) {
    await waitFor(async () => {
      const response = await fetch(`${node.apiUrl}/destinations/${encodeURIComponent('/topic/comments.9')}`);
      return (await response.json()).subscribers === 9;
    }, 'nine readers counted on every node');
  }
  for (const { client } of [...readers, other]) await client.deactivate();
});
