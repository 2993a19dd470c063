/** Bills kept as JSON Lines (Stripe, PayPal, Apple): one record per line, written with backpressure. */
import fs from 'node:fs';
import { once } from 'node:events';

/** Write `items` to `path` as JSON Lines, streamed; answers how many were written. */
export async function writeJsonLines<T>(path: string, items: Iterable<T> | AsyncIterable<T>): Promise<number> {
  const out = fs.createWriteStream(path);
  let n = 0;
  try {
    for await (const item of items) {
      n++;
      if (!out.write(JSON.stringify(item) + '\n')) await once(out, 'drain');
    }
    out.end();
    await once(out, 'finish');
  } catch (err) {
    out.destroy();
    throw err;
  }
  return n;
}
