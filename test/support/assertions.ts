/**
 * Assertions the channel and bill tests share: a promise that fails with a ChannelError of the
 * given code (and retryability, message, channel when given), and reading a bill reader's lines.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after } from 'node:test';
import { ChannelError } from '../../src/channels/types.ts';
import type { BillLine } from '../../src/reconciliation/types.ts';

/** `p` rejects with a ChannelError `code`; `retryable`, `message` and `channel` are checked when given. */
export async function rejectsWith(p: Promise<unknown>, code: string, retryable?: boolean, message?: RegExp, channel?: string): Promise<void> {
  await assert.rejects(p, (err: unknown) => {
    assert.ok(err instanceof ChannelError, String(err));
    assert.equal(err.code, code, err.message);
    if (channel !== undefined) assert.equal(err.channel, channel);
    if (retryable !== undefined) assert.equal(err.retryable, retryable, `${code} retryable: ${err.message}`);
    if (message) assert.match(err.message, message);
    return true;
  });
}

/** Every line a bill reader yields for the file at `p`. */
export async function readAllLines(reader: (p: string) => AsyncIterable<BillLine>, p: string): Promise<BillLine[]> {
  const out: BillLine[] = [];
  for await (const l of reader(p)) out.push(l);
  return out;
}

/**
 * A temporary folder for a test file's bills (removed after the file's tests): `fresh()` names a
 * new file in it, `file(content)` writes one.
 */
export function billFiles(prefix: string, extension = 'jsonl'): { dir: string; fresh: () => string; file: (content: string | Buffer) => string } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `${prefix}-`));
  after(() => fs.rmSync(dir, { recursive: true, force: true }));
  let n = 0;
  const fresh = () => path.join(dir, `bill-${++n}.${extension}`);
  return {
    dir,
    fresh,
    file(content) {
      const p = fresh();
      fs.writeFileSync(p, content);
      return p;
    },
  };
}
