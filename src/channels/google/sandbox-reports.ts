/**
 * The Google Play sandbox's financial reports, served the way Google serves them: Play writes the
 * developer's reports to the Cloud Storage bucket `pubsite_prod_rev_<developer id>`, and the
 * earnings report of a month is the object `earnings/earnings_YYYYMM_<developer id>.zip` (bill.ts
 * has the format). A service account reads it through the Cloud Storage JSON API:
 *
 *   GET /storage/v1/b/{bucket}/o/{url-encoded object name}?alt=media   → the zip
 *   GET /storage/v1/b/{bucket}/o/{url-encoded object name}             → the object's metadata
 *
 * with the bearer token the sandbox's /token issues (scope devstorage.read_only, or any scope
 * Cloud Storage accepts for reading). Google's answers: 401 without a valid token, 403 without a
 * storage scope, 404 `notFound` for another bucket or an object that does not exist.
 *
 * The report is built at each request from the sandbox's own records (sandbox-purchases.ts,
 * listEarningsEvents): every purchase paid in the month (Pacific time) is a Charge row and a
 * Google fee row (15%: DEFAULT_FEES.google_play, rounded as Knowpay estimates it, so a sandbox day
 * reconciles), every purchase voided in the month a Charge refund row and a Google fee refund row
 * (the whole fee given back: the sandbox only makes full refunds). No tax rows: the sandbox charges
 * no tax. Prices: priceOfPurchase. Unlike Google — which publishes a month's earnings early the next
 * month, and leaves license-tester purchases out (all sandbox purchases are tester purchases) —
 * the sandbox serves the current month so far, and every month before it (an empty month is a
 * report with its header only); a later month is 404.
 */
import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import yazl from 'yazl';
import type { Queryable } from '../../store/db.ts';
import { DEFAULT_FEES, estimateFee } from '../../domain/ledger-rules.ts';
import {
  developerIdOfBucket, earningsCsvName, googlePlayEarningsCsvChunks, googlePlayOrderRows, pacificDay, parseReportTime, type GooglePlayEarningsRow,
} from './bill.ts';
import { googleError, type ApiAnswer } from './sandbox-api.ts';
import { listEarningsEvents } from './sandbox-purchases.ts';

/** Cloud Storage scopes that allow reading an object. */
export const STORAGE_READ_SCOPES: readonly string[] = [
  'https://www.googleapis.com/auth/devstorage.read_only',
  'https://www.googleapis.com/auth/devstorage.read_write',
  'https://www.googleapis.com/auth/devstorage.full_control',
  'https://www.googleapis.com/auth/cloud-platform.read-only',
  'https://www.googleapis.com/auth/cloud-platform',
];

/** The sandbox's reporting bucket: a developer id of 20 digits derived from the package name (stable). */
export function sandboxReportsBucket(packageName: string): string {
  const digest = createHash('sha256').update(`play-developer|${packageName}`).digest();
  let digits = '';
  for (let i = 0; digits.length < 20; i++) digits += String(digest[i % digest.length]! % 10);
  return `pubsite_prod_rev_${digits.replace(/^0/, '1')}`;
}

/**
 * `…/storage/v1/b/{bucket}/o/{object}` from the raw URL; the object name is one path segment,
 * URL-encoded (`earnings%2Fearnings_…`), as the JSON API wants it.
 */
export function parseStorageObjectPath(rawUrl: string): { bucket: string; object: string; query: URLSearchParams } | null {
  const [path = '', q = ''] = rawUrl.split('?', 2);
  const at = path.indexOf('/storage/v1/b/');
  if (at < 0 || path.length > 4096) return null;
  const segments = path.slice(at + '/storage/v1/b/'.length).split('/');
  if (segments.length !== 3 || segments[1] !== 'o' || !segments[0] || !segments[2]) return null;
  try {
    return { bucket: decodeURIComponent(segments[0]), object: decodeURIComponent(segments[2]), query: new URLSearchParams(q) };
  } catch {
    return null;
  }
}

/** [start, end) of a Pacific month YYYYMM, as instants. */
function pacificMonth(month: string): { from: Date; to: Date } {
  const y = Number(month.slice(0, 4));
  const m = Number(month.slice(4, 6));
  const midnight = (yy: number, mm: number) => parseReportTime(`${yy}-${String(mm).padStart(2, '0')}-01`, '12:00:00 AM')!;
  return { from: midnight(y, m), to: m === 12 ? midnight(y + 1, 1) : midnight(y, m + 1) };
}

/** The month's report rows (sandbox records, Pacific month YYYYMM), oldest first. */
export async function earningsReportRows(db: Queryable, packageName: string, month: string): Promise<GooglePlayEarningsRow[]> {
  const { from, to } = pacificMonth(month);
  const events = await listEarningsEvents(db, { packageName, from, to });
  const schedule = DEFAULT_FEES.google_play!;
  return events.flatMap((e) => googlePlayOrderRows({
    kind: e.kind, orderId: e.orderId, at: e.at, amount: e.price.amountMinor, fee: estimateFee(e.price.amountMinor, schedule), currency: e.price.currency,
    packageName, skuId: e.productId, productTitle: e.productId, buyerCountry: e.regionCode, feePercent: String(schedule.bps / 100),
  }));
}

/** The report as Play stores it: a zip holding PlayApps_YYYYMM.csv, streamed. */
export function earningsZipStream(rows: GooglePlayEarningsRow[], month: string): Readable {
  const zip = new yazl.ZipFile();
  zip.addReadStream(Readable.from(googlePlayEarningsCsvChunks(rows)), earningsCsvName(month));
  zip.end();
  return zip.outputStream as unknown as Readable;
}

export interface ReportsContext {
  db: Queryable;
  packageName: string;
  bucket: string;
  now: Date;
}

const noSuchObject = (bucket: string, object: string) => googleError(404, `No such object: ${bucket}/${object}`, 'notFound');
const noSuchBucket = () => googleError(404, 'The specified bucket does not exist.', 'notFound');

export type StorageAnswer =
  | { ok: true; media: true; month: string; rows: GooglePlayEarningsRow[] }
  | { ok: true; media: false; answer: ApiAnswer }
  | { ok: false; answer: ApiAnswer };

/** GET /storage/v1/b/{bucket}/o/{object}[?alt=media], after authentication. */
export async function storageObject(ctx: ReportsContext, rawUrl: string): Promise<StorageAnswer> {
  const path = parseStorageObjectPath(rawUrl);
  if (!path) return { ok: false, answer: googleError(404, 'Not Found', 'notFound') };
  if (path.bucket !== ctx.bucket) return { ok: false, answer: noSuchBucket() };
  const alt = path.query.get('alt') ?? 'json';
  if (alt !== 'json' && alt !== 'media') return { ok: false, answer: googleError(400, `Invalid value for alt: ${alt.slice(0, 20)}`, 'invalidParameter', { location: 'alt' }) };
  const developerId = developerIdOfBucket(ctx.bucket)!;
  const m = /^earnings\/earnings_(\d{4})(\d{2})_(\d+)\.zip$/.exec(path.object);
  const month = m ? `${m[1]}${m[2]}` : '';
  const current = pacificDay(ctx.now).slice(0, 7).replace('-', '');
  if (!m || m[3] !== developerId || Number(m[2]) < 1 || Number(m[2]) > 12 || month > current) {
    return { ok: false, answer: noSuchObject(path.bucket, path.object) };
  }
  const rows = await earningsReportRows(ctx.db, ctx.packageName, month);
  if (alt === 'media') return { ok: true, media: true, month, rows };
  // Metadata: the object as it is now (its bytes are built to know their size and MD5).
  const chunks: Buffer[] = [];
  for await (const c of earningsZipStream(rows, month)) chunks.push(c as Buffer);
  const bytes = Buffer.concat(chunks);
  const generation = String(ctx.now.getTime() * 1000);
  const name = encodeURIComponent(path.object);
  return {
    ok: true,
    media: false,
    answer: {
      status: 200,
      body: {
        kind: 'storage#object',
        id: `${path.bucket}/${path.object}/${generation}`,
        selfLink: `https://www.googleapis.com/storage/v1/b/${path.bucket}/o/${name}`,
        mediaLink: `https://storage.googleapis.com/download/storage/v1/b/${path.bucket}/o/${name}?generation=${generation}&alt=media`,
        name: path.object,
        bucket: path.bucket,
        generation,
        metageneration: '1',
        contentType: 'application/zip',
        storageClass: 'STANDARD',
        size: String(bytes.length),
        md5Hash: createHash('md5').update(bytes).digest('base64'),
        etag: createHash('sha1').update(bytes).digest('base64').slice(0, 16),
        timeCreated: ctx.now.toISOString(),
        updated: ctx.now.toISOString(),
        timeStorageClassUpdated: ctx.now.toISOString(),
      },
    },
  };
}

