/**
 * The day's bill through PayPal's Transaction Search: `GET /v1/reporting/transactions` with the UTC
 * day as start_date/end_date (inclusive, to the second), fields=transaction_info (our reader needs
 * nothing else, and payer/shipping details are personal data we do not want on disk),
 * page_size=500, page=1…total_pages; each item written as one JSON line (bill.ts reads it).
 *
 * - PayPal answers at most 10,000 results per search (400 RESULTSET_TOO_LARGE): the window is then
 *   halved, down to one second, and each half searched in order, so the file stays in time order.
 * - PayPal's data lags up to three hours: when `last_refreshed_datetime` is before the window's end
 *   (or before "now" for today's bill, with a minute's grace) the bill is not ready: a retryable
 *   ChannelError `bill_not_ready`.
 * - Bounded: pages (MAX_PAGES), transactions (MAX_BILL_LINES), bytes (BILL_MAX_BYTES), total time
 *   (BILL_DEADLINE_MS); each call has the client's timeout and retries. Written to `destination.part`,
 *   renamed when complete, removed on failure.
 */
import fs from 'node:fs';
import { once } from 'node:events';
import { ChannelError } from '../types.ts';
import { MAX_BILL_LINES } from '../../reconciliation/types.ts';
import { errorFromResponse, type PayPalClient } from './client.ts';
import { readError, isObject } from './transformers.ts';
import { parsePayPalTime } from './bill.ts';

export const BILL_PAGE_SIZE = 500;
export const MAX_PAGES = Math.ceil(MAX_BILL_LINES / BILL_PAGE_SIZE) + 2_000;
export const BILL_MAX_BYTES = 4 * 1024 * 1024 * 1024;
export const BILL_DEADLINE_MS = 30 * 60_000;
const DAY_MS = 86_400_000;
const REFRESH_GRACE_MS = 60_000;

export interface DownloadOptions { now?: () => Date; deadlineMs?: number; maxPages?: number }

const rfc3339 = (ms: number) => new Date(ms).toISOString().replace(/\.\d{3}Z$/, 'Z');
const fail = (message: string, code: string, retryable: boolean) => new ChannelError(message, 'paypal', code, retryable);

export async function downloadPaypalBill(client: PayPalClient, input: { billDate: string; destination: string }, opts: DownloadOptions = {}): Promise<void> {
  if (!/^\d{4}-\d{2}-\d{2}$/.test(input.billDate) || Number.isNaN(Date.parse(`${input.billDate}T00:00:00Z`))
    || new Date(`${input.billDate}T00:00:00Z`).toISOString().slice(0, 10) !== input.billDate) {
    throw fail(`bill_date must be YYYY-MM-DD, got ${input.billDate}`, 'bill_date_invalid', false);
  }
  const now = opts.now ?? (() => new Date());
  const deadline = Date.now() + (opts.deadlineMs ?? BILL_DEADLINE_MS);
  const maxPages = opts.maxPages ?? MAX_PAGES;
  const dayStart = Date.parse(`${input.billDate}T00:00:00Z`);
  if (dayStart > now().getTime()) throw fail(`the bill of ${input.billDate} does not exist yet`, 'bill_not_ready', true);
  const part = `${input.destination}.part`;
  const out = fs.createWriteStream(part);
  let pages = 0;
  let items = 0;
  let bytes = 0;
  const write = async (text: string) => {
    bytes += Buffer.byteLength(text);
    if (bytes > BILL_MAX_BYTES) throw fail('the bill is larger than allowed', 'bill_too_large', false);
    if (!out.write(text)) await once(out, 'drain');
  };
  try {
    // Windows [from, to) in ms, searched in time order; a too-large one is replaced by its halves.
    const windows: Array<[number, number]> = [[dayStart, dayStart + DAY_MS]];
    while (windows.length > 0) {
      const [from, to] = windows.shift()!;
      let page = 1;
      let totalPages = 1;
      while (page <= totalPages) {
        if (++pages > maxPages) throw fail(`more than ${maxPages} pages of transactions`, 'bill_too_large', false);
        if (Date.now() > deadline) throw fail('the bill download took too long', 'bill_timeout', true);
        const asked = now().getTime();
        const params = new URLSearchParams({
          start_date: rfc3339(from), end_date: rfc3339(to - 1000), fields: 'transaction_info', page_size: String(BILL_PAGE_SIZE), page: String(page),
        });
        const res = await client.call({ operation: 'download_bill', method: 'GET', path: `/v1/reporting/transactions?${params}` });
        if (res.status === 400 && isTooLarge(res.body)) {
          if (page !== 1) throw fail(`the search of ${rfc3339(from)}…${rfc3339(to)} grew too large while paging`, 'bill_changed', true);
          const mid = from + Math.floor((to - from) / 2000) * 1000;
          if (mid <= from) throw fail(`more than PayPal's search limit within one second (${rfc3339(from)})`, 'bill_too_large', false);
          windows.unshift([from, mid], [mid, to]);
          break;
        }
        if (res.status !== 200) throw errorFromResponse('transaction search', res.status, res.body);
        const body = res.body;
        if (!isObject(body) || !Array.isArray(body['transaction_details'])) throw fail('transaction search answered without transaction_details', 'invalid_response', true);
        const tp = body['total_pages'];
        if (typeof tp !== 'number' || !Number.isSafeInteger(tp) || tp < 0) throw fail('transaction search answered without total_pages', 'invalid_response', true);
        if (body['page'] !== undefined && body['page'] !== page) throw fail(`asked for page ${page}, PayPal answered page ${String(body['page'])}`, 'invalid_response', true);
        const refreshed = parsePayPalTime(body['last_refreshed_datetime']);
        if (refreshed && refreshed.getTime() < Math.min(to, asked - REFRESH_GRACE_MS)) {
          throw fail(`PayPal's transactions are refreshed up to ${refreshed.toISOString()} only, the bill needs ${new Date(to).toISOString()}`, 'bill_not_ready', true);
        }
        totalPages = tp;
        const details = body['transaction_details'] as unknown[];
        if (details.length > BILL_PAGE_SIZE) throw fail(`a page of ${details.length} transactions (asked ${BILL_PAGE_SIZE})`, 'invalid_response', false);
        items += details.length;
        if (items > MAX_BILL_LINES) throw fail(`more than ${MAX_BILL_LINES} transactions`, 'bill_too_large', false);
        let chunk = '';
        for (const d of details) {
          if (!isObject(d) || !isObject(d['transaction_info'])) throw fail('transaction search answered an item without transaction_info', 'invalid_response', true);
          chunk += JSON.stringify(d) + '\n';
        }
        if (chunk) await write(chunk);
        if (details.length === 0) break; // nothing more, whatever total_pages said
        page++;
      }
    }
    out.end();
    await once(out, 'finish');
    await fs.promises.rename(part, input.destination);
  } catch (err) {
    out.destroy();
    await fs.promises.rm(part, { force: true });
    throw err;
  }
}

function isTooLarge(body: unknown): boolean {
  const e = readError(body);
  return e.name === 'RESULTSET_TOO_LARGE' || e.issue === 'RESULTSET_TOO_LARGE';
}

/** What the audit log keeps of a search answer: not the transactions, their count. */
export function summarizeSearchAnswer(response: unknown): unknown {
  if (!isObject(response) || !isObject(response['body'])) return response;
  const body = response['body'];
  if (!Array.isArray(body['transaction_details'])) return response;
  const { transaction_details: list, ...rest } = body;
  return { ...response, body: { ...rest, transaction_details_count: (list as unknown[]).length } };
}
