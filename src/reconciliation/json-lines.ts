/** Bills kept as JSON Lines (Stripe, PayPal, Apple): one record per line, written with backpressure. */
import fs from 'node:fs';
import { once } from 'node:events';
import { BillFormatError } from './types.ts';

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

/**
 * Read a JSON Lines bill: each non-blank line parsed, with its 1-based line number; a BOM and CRLF
 * line ends tolerated; a line that is not JSON, or longer than `maxLineChars`, refused with a
 * BillFormatError ending in `what` (why the file is not the bill it claims to be). Streams: memory
 * holds one chunk and one line.
 */
export async function* readJsonLines(path: string, opts: { maxLineChars: number; what: string }): AsyncGenerator<{ lineNo: number; value: unknown }> {
  const source = fs.createReadStream(path, { encoding: 'utf8', highWaterMark: 256 * 1024 });
  let lineNo = 0;
  let rest = '';
  const parse = (raw: string): { lineNo: number; value: unknown } | null => {
    lineNo++;
    let line = raw.endsWith('\r') ? raw.slice(0, -1) : raw;
    if (lineNo === 1 && line.charCodeAt(0) === 0xfeff) line = line.slice(1);
    if (line.trim() === '') return null;
    try {
      return { lineNo, value: JSON.parse(line) };
    } catch {
      throw new BillFormatError(`line ${lineNo} is not JSON: ${opts.what}`);
    }
  };
  try {
    for await (const chunk of source as AsyncIterable<string>) {
      const parts = (rest + chunk).split('\n');
      rest = parts.pop()!;
      if (rest.length > opts.maxLineChars) throw new BillFormatError(`line ${lineNo + parts.length + 1} is longer than ${opts.maxLineChars} bytes: ${opts.what}`);
      for (const part of parts) {
        const parsed = parse(part);
        if (parsed) yield parsed;
      }
    }
    if (rest) {
      const parsed = parse(rest);
      if (parsed) yield parsed;
    }
  } finally {
    source.destroy();
  }
}
