// BullMQ peer of the Delayline benchmark suite, driven by bench/peers/bullmq_peer.py.
//
//   node bench.mjs schedule <redis-url> <n> <chunk>          scenario 1: addBulk of delayed jobs
//   node bench.mjs fire     <redis-url> <n> <concurrency>    scenario 2: n jobs due at one instant
//   node bench.mjs steady   <redis-url> <queue> <rate> <seconds> <min-delay-s> <max-delay-s>
//   node bench.mjs worker   <redis-url> <queue> <concurrency>  (reads the job count on stdin)
//
// Each mode prints one JSON document on stdout. Lateness is measured the way BullMQ users
// would: the job function records Date.now() minus the job's due time (timestamp + delay).
import { Queue, Worker } from "bullmq";
import { createInterface } from "node:readline";

// The same 300-byte JSON body the other scenarios use (passed by the Python driver).
const BODY = process.env.BENCH_BODY ?? "{}";

function connection(url) {
  const u = new URL(url);
  return { host: u.hostname, port: Number(u.port), maxRetriesPerRequest: null };
}

const jobOpts = (delay) => ({ delay, removeOnComplete: true, removeOnFail: true });

async function schedule(url, n, chunk) {
  const queue = new Queue(`sched-${process.pid}`, { connection: connection(url) });
  await queue.waitUntilReady();
  const started = performance.now();
  for (let offset = 0; offset < n; offset += chunk) {
    const size = Math.min(chunk, n - offset);
    const jobs = [];
    for (let i = 0; i < size; i++) jobs.push({ name: "ev", data: { body: BODY }, opts: jobOpts(3_600_000) });
    await queue.addBulk(jobs);
  }
  const seconds = (performance.now() - started) / 1000;
  const delayed = await queue.getDelayedCount();
  await queue.close();
  return { events: n, chunk, seconds, events_per_s: n / seconds, delayed };
}

async function fire(url, n, concurrency) {
  const name = `fire-${process.pid}`;
  const queue = new Queue(name, { connection: connection(url) });
  await queue.waitUntilReady();
  const dueAt = Date.now() + 1000; // every job due at this instant (or 1 ms after its add)
  for (let offset = 0; offset < n; offset += 5000) {
    const size = Math.min(5000, n - offset);
    const jobs = [];
    for (let i = 0; i < size; i++) {
      jobs.push({ name: "ev", data: { body: BODY, due: dueAt }, opts: jobOpts(Math.max(1, dueAt - Date.now())) });
    }
    await queue.addBulk(jobs);
  }
  while (Date.now() < dueAt + 10) await new Promise((r) => setTimeout(r, 5));
  let done = 0;
  let last = 0;
  let finish;
  const finished = new Promise((r) => (finish = r));
  const started = performance.now();
  const worker = new Worker(
    name,
    async () => {
      done += 1;
      if (done >= n) {
        last = performance.now();
        finish();
      }
    },
    { connection: connection(url), concurrency, autorun: true },
  );
  await finished;
  await worker.close();
  await queue.close();
  const seconds = (last - started) / 1000;
  return { events: n, fired: done, concurrency, seconds, events_per_s: done / seconds };
}

async function steady(url, name, rate, duration, dmin, dmax) {
  const queue = new Queue(name, { connection: connection(url) });
  await queue.waitUntilReady();
  let sent = 0;
  const started = performance.now();
  for (;;) {
    const elapsed = (performance.now() - started) / 1000;
    if (elapsed >= duration) break;
    const count = Math.floor(rate * elapsed) - sent;
    if (count > 0) {
      const now = Date.now();
      const jobs = [];
      for (let i = 0; i < count; i++) {
        const delay = Math.round((dmin + Math.random() * (dmax - dmin)) * 1000);
        jobs.push({ name: "ev", data: { body: BODY, due: now + delay }, opts: { ...jobOpts(delay), timestamp: now } });
      }
      await queue.addBulk(jobs);
      sent += count;
    }
    await new Promise((r) => setTimeout(r, 10));
  }
  await queue.close();
  return { sent };
}

async function worker(url, name, concurrency) {
  const lateness = [];
  let target = Infinity;
  let finish;
  const finished = new Promise((r) => (finish = r));
  const w = new Worker(
    name,
    async (job) => {
      lateness.push(Date.now() - job.data.due);
      if (lateness.length >= target) finish();
    },
    { connection: connection(url), concurrency },
  );
  await w.waitUntilReady();
  process.stderr.write("ready\n");
  const rl = createInterface({ input: process.stdin });
  for await (const line of rl) {
    target = Number(line);
    break;
  }
  if (lateness.length >= target) finish();
  const timeout = setTimeout(finish, 60_000);
  await finished;
  clearTimeout(timeout);
  await w.close();
  return { fired: lateness.length, lateness_ms: lateness };
}

const [mode, url, ...rest] = process.argv.slice(2);
const modes = {
  schedule: () => schedule(url, Number(rest[0]), Number(rest[1])),
  fire: () => fire(url, Number(rest[0]), Number(rest[1])),
  steady: () => steady(url, rest[0], Number(rest[1]), Number(rest[2]), Number(rest[3]), Number(rest[4])),
  worker: () => worker(url, rest[0], Number(rest[1])),
};
const out = await modes[mode]();
// exit only once the document is flushed: a pipe takes 64 KiB at a time and exit() drops the rest
process.stdout.write(JSON.stringify(out) + "\n", () => process.exit(0));
