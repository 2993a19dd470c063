/**
 * Alipay's trade bill (alipay.data.dataservice.bill.downloadurl.query, bill_type "trade"): a zip
 * holding `…_业务明细.csv` and `…_业务明细(汇总).csv`, GBK-encoded; lines starting with `#` are
 * header and footer; values carry trailing spaces and tabs; amounts in yuan; 服务费 negative.
 * Reading streams (constant memory whatever the size); writing is for the sandbox and tests.
 */
import fs from 'node:fs';
import { Readable } from 'node:stream';
import iconv from 'iconv-lite';
import yauzl from 'yauzl';
import yazl from 'yazl';
import { parse as parseSync } from 'csv-parse/sync';
import { formatDecimal, parseDecimal } from '../../domain/money.ts';
import { BillFormatError, MAX_BILL_LINES, type BillLine } from '../../reconciliation/types.ts';

export const ALIPAY_BILL_COLUMNS = [
  '支付宝交易号', '商户订单号', '业务类型', '商品名称', '创建时间', '完成时间', '门店编号', '门店名称', '操作员', '终端号', '对方账户',
  '订单金额(元)', '商家实收(元)', '支付宝红包(元)', '集分宝(元)', '支付宝优惠(元)', '商家优惠(元)', '券核销金额(元)', '券名称',
  '商家红包消费金额(元)', '卡消费金额(元)', '退款批次号/请求号', '服务费(元)', '分润(元)', '备注',
] as const;

const HEADER_SCAN_LINES = 10;

function gmt8(text: string): Date | undefined {
  const m = /^(\d{4})-(\d{2})-(\d{2}) (\d{2}):(\d{2}):(\d{2})$/.exec(text);
  if (!m) return undefined;
  return new Date(Date.UTC(+m[1]!, +m[2]! - 1, +m[3]!, +m[4]! - 8, +m[5]!, +m[6]!));
}

/** The detail CSV's bytes as a stream: from the zip when it is one, else the file itself. */
async function detailStream(path: string): Promise<Readable> {
  const head = Buffer.alloc(4);
  const fd = await fs.promises.open(path, 'r');
  try { await fd.read(head, 0, 4, 0); } finally { await fd.close(); }
  if (head.readUInt32LE(0) !== 0x04034b50) return fs.createReadStream(path);
  return new Promise((resolve, reject) => {
    yauzl.open(path, { lazyEntries: true, decodeStrings: false }, (err, zip) => {
      if (err || !zip) return reject(new BillFormatError(`not a readable zip: ${err?.message ?? 'unknown'}`));
      let found = false;
      zip.on('entry', (entry: yauzl.Entry) => {
        const raw = entry.fileName as unknown as Buffer;
        const name = entry.generalPurposeBitFlag & 0x800 ? raw.toString('utf8') : iconv.decode(raw, 'gbk');
        if (name.endsWith('业务明细.csv') && !name.includes('汇总')) {
          found = true;
          zip.openReadStream(entry, (e, stream) => (e || !stream ? reject(e ?? new Error('no stream')) : resolve(stream)));
        } else {
          zip.readEntry();
        }
      });
      zip.on('end', () => { if (!found) reject(new BillFormatError('the zip holds no …_业务明细.csv: not an Alipay trade bill')); });
      zip.on('error', (e) => reject(new BillFormatError(`bad zip: ${e.message}`)));
      zip.readEntry();
    });
  });
}

/** One CSV record: plain comma-separated (Alipay's bills quote nothing); quoted lines go through csv-parse. */
function splitRecord(line: string): string[] {
  if (!line.includes('"')) return line.split(',');
  return (parseSync(line, { relax_quotes: true, relax_column_count: true }) as string[][])[0] ?? [];
}

/** Stream the normalised lines of an Alipay trade bill file (zip or bare CSV, GBK). */
export async function* readAlipayBill(path: string): AsyncGenerator<BillLine> {
  const source = await detailStream(path);
  const text = source.pipe(iconv.decodeStream('gbk'));
  let header: Map<string, number> | null = null;
  let col: { ref: number; type: number; amount: number; fee: number; refund: number; finished: number; tradeNo: number } | null = null;
  let seen = 0;
  let lineNo = 0;
  let rest = '';
  const handle = (raw: string): BillLine | null => {
    const line = raw.endsWith('\r') ? raw.slice(0, -1) : raw;
    if (line.trim() === '') return null;
    seen++;
    if (line.startsWith('#')) return null;
    if (!header) {
      const row = splitRecord(line).map((c) => c.trim());
      if (row[0] === '支付宝交易号') {
        header = new Map(row.map((c, i) => [c, i]));
        for (const c of ['商户订单号', '业务类型', '订单金额(元)', '服务费(元)', '退款批次号/请求号', '完成时间']) {
          if (!header.has(c)) throw new BillFormatError(`the Alipay bill header lacks the column ${c}`);
        }
        col = { ref: header.get('商户订单号')!, type: header.get('业务类型')!, amount: header.get('订单金额(元)')!, fee: header.get('服务费(元)')!,
          refund: header.get('退款批次号/请求号')!, finished: header.get('完成时间')!, tradeNo: header.get('支付宝交易号')! };
      } else if (seen > HEADER_SCAN_LINES) {
        throw new BillFormatError('no line starting with 支付宝交易号 in the first lines: not an Alipay trade bill');
      }
      return null;
    }
    lineNo++;
    if (lineNo > MAX_BILL_LINES) throw new BillFormatError(`more than ${MAX_BILL_LINES} lines`);
    const row = splitRecord(line);
    const v = (i: number) => (row[i] ?? '').trim();
    const type = v(col!.type);
    if (type !== '交易' && type !== '退款') return null; // other business types are not trades of ours
    const amountText = v(col!.amount);
    const feeText = v(col!.fee);
    const amount = parseDecimal(amountText.startsWith('-') ? amountText.slice(1) : amountText, 'CNY');
    const fee = parseDecimal(feeText === '' ? '0' : feeText.startsWith('-') ? feeText.slice(1) : feeText, 'CNY');
    if (amount === null || fee === null) throw new BillFormatError(`line ${lineNo}: unreadable amount '${amountText}' or fee '${feeText}'`);
    const tradeNo = v(col!.tradeNo);
    const refundRef = v(col!.refund);
    return {
      lineNo,
      kind: type === '交易' ? 'payment' : 'refund',
      channelReference: v(col!.ref),
      channelTransactionId: tradeNo || undefined,
      refundReference: type === '退款' ? refundRef || undefined : undefined,
      amount, fee, currency: 'CNY', occurredAt: gmt8(v(col!.finished)),
    };
  };
  for await (const chunk of text as AsyncIterable<string>) {
    const parts = (rest + chunk).split('\n');
    rest = parts.pop()!;
    const out: BillLine[] = [];
    for (const part of parts) {
      const l = handle(part);
      if (l) out.push(l);
    }
    yield* out;
  }
  if (rest) { const l = handle(rest); if (l) yield l; }
  if (!header) throw new BillFormatError('no line starting with 支付宝交易号 in the first lines: not an Alipay trade bill');
}

export interface AlipayBillRow {
  tradeNo: string; outTradeNo: string; kind: 'payment' | 'refund'; subject: string; createdAt: Date; finishedAt: Date;
  amount: bigint; fee: bigint; refundReference?: string;
}

const fmtTime = (d: Date) => new Date(d.getTime() + 8 * 3600_000).toISOString().replace('T', ' ').slice(0, 19);

/** The bill's detail CSV text for some rows (GBK-encoded by the caller). */
export function alipayBillCsv(appId: string, billDate: string, rows: Iterable<AlipayBillRow>): string {
  const out: string[] = [`#支付宝业务明细查询`, `#账号：[${appId}0156]`, `#起始日期：[${billDate} 00:00:00]   终止日期：[${billDate} 23:59:59]`, `#-----------------------------------------业务明细列表----------------------------------------`, ALIPAY_BILL_COLUMNS.join(',')];
  let n = 0;
  for (const r of rows) {
    n++;
    const sign = r.kind === 'refund' ? '-' : '';
    const cells = [
      r.tradeNo + '\t', r.outTradeNo + '\t', r.kind === 'payment' ? '交易' : '退款', r.subject.replace(/[,\n\r]/g, ' '), fmtTime(r.createdAt), fmtTime(r.finishedAt),
      '', '', '', '', '', sign + formatDecimal(r.amount, 'CNY'), sign + formatDecimal(r.amount, 'CNY'), '0.00', '0.00', '0.00', '0.00', '0.00', '',
      '0.00', '0.00', r.refundReference ?? '', (r.kind === 'payment' ? '-' : '') + formatDecimal(r.fee, 'CNY'), '0.00', '',
    ];
    out.push(cells.map((c) => c + ' ').join(','));
  }
  out.push(`#-----------------------------------------业务明细列表结束------------------------------------`, `#交易合计：${n}笔`, `#导出时间：[${fmtTime(new Date())}]`);
  return out.join('\r\n') + '\r\n';
}

/** The zip Alipay serves: detail and summary CSVs, GBK, file names in GBK. Streams to `path`. */
export async function writeAlipayBillZip(path: string, appId: string, billDate: string, rows: Iterable<AlipayBillRow>): Promise<void> {
  const zip = new yazl.ZipFile();
  const base = `${appId}0156_${billDate.replaceAll('-', '')}`;
  // The detail CSV is produced lazily so a million lines never sit in memory at once.
  const detail = Readable.from((function* () {
    const it = rows[Symbol.iterator]();
    yield iconv.encode(alipayBillCsv(appId, billDate, []).split('\r\n').slice(0, 5).join('\r\n') + '\r\n', 'gbk');
    let batch: AlipayBillRow[] = [];
    let count = 0;
    for (let r = it.next(); !r.done; r = it.next()) {
      batch.push(r.value);
      count++;
      if (batch.length === 5000) { yield iconv.encode(alipayBillCsv(appId, billDate, batch).split('\r\n').slice(5, -4).join('\r\n') + '\r\n', 'gbk'); batch = []; }
    }
    if (batch.length) yield iconv.encode(alipayBillCsv(appId, billDate, batch).split('\r\n').slice(5, -4).join('\r\n') + '\r\n', 'gbk');
    yield iconv.encode(`#-----------------------------------------业务明细列表结束------------------------------------\r\n#交易合计：${count}笔\r\n`, 'gbk');
  })());
  zip.addReadStream(detail, `${base}_业务明细.csv`);
  zip.addBuffer(iconv.encode(`#支付宝业务汇总查询\r\n门店编号,门店名称,交易订单总笔数\r\n`, 'gbk'), `${base}_业务明细(汇总).csv`);
  zip.end();
  await new Promise<void>((resolve, reject) => {
    const out = fs.createWriteStream(path);
    zip.outputStream.pipe(out).on('close', () => resolve()).on('error', reject);
  });
}
