/**
 * A subset of Stripe's Search Query Language for PaymentIntents, compiled to SQL:
 *   clause  := ['-'] field op value          (at most 10, joined by AND or by OR, never both)
 *   field   := metadata['key'] | metadata["key"] | status | currency | amount | created
 *   op      := ':'  (every field)   |  '>' '<' '>=' '<='  (amount, created)
 *   value   := 'text' | "text" (backslash escapes the quote)  |  integer (amount, created)
 * Anything else is refused with a message, as Stripe refuses what it cannot parse.
 */

export type SearchField = { kind: 'metadata'; key: string } | { kind: 'status' } | { kind: 'currency' } | { kind: 'amount' } | { kind: 'created' };
export type SearchOp = ':' | '>' | '<' | '>=' | '<=';
export interface SearchClause { negated: boolean; field: SearchField; op: SearchOp; value: string | number }
export interface SearchQuery { join: 'AND' | 'OR'; clauses: SearchClause[] }
export type ParsedQuery = { ok: true; query: SearchQuery } | { ok: false; message: string };

export const MAX_QUERY_CHARS = 1000;
export const MAX_CLAUSES = 10;
const NUMERIC_FIELDS = new Set(['amount', 'created']);

class QueryError extends Error {}

export function parseSearchQuery(text: string): ParsedQuery {
  if (typeof text !== 'string' || text.trim() === '') return { ok: false, message: 'Search query is empty.' };
  if (text.length > MAX_QUERY_CHARS) return { ok: false, message: `Search query is longer than ${MAX_QUERY_CHARS} characters.` };
  try {
    return { ok: true, query: new Parser(text).parse() };
  } catch (err) {
    if (err instanceof QueryError) return { ok: false, message: `We were unable to parse your search query: ${err.message}. Try using the format metadata['key']:'value' or field:'value'.` };
    throw err;
  }
}

class Parser {
  private at = 0;
  constructor(private readonly s: string) {}

  parse(): SearchQuery {
    const clauses = [this.clause()];
    let join: 'AND' | 'OR' | null = null;
    for (;;) {
      this.spaces();
      if (this.at >= this.s.length) break;
      const word = /^(AND|OR)\b/.exec(this.s.slice(this.at))?.[1] as 'AND' | 'OR' | undefined;
      if (!word) throw new QueryError(`unexpected ${JSON.stringify(this.s.slice(this.at, this.at + 10))} at position ${this.at}`);
      if (join && join !== word) throw new QueryError('AND and OR cannot be combined in one query');
      join = word;
      this.at += word.length;
      clauses.push(this.clause());
      if (clauses.length > MAX_CLAUSES) throw new QueryError(`more than ${MAX_CLAUSES} clauses`);
    }
    return { join: join ?? 'AND', clauses };
  }

  private spaces(): void {
    while (this.at < this.s.length && /\s/.test(this.s[this.at]!)) this.at++;
  }

  private clause(): SearchClause {
    this.spaces();
    let negated = false;
    if (this.s[this.at] === '-') {
      negated = true;
      this.at++;
    }
    const field = this.field();
    const op = this.op();
    if (op !== ':' && !NUMERIC_FIELDS.has(field.kind)) throw new QueryError(`${op} is only supported on amount and created`);
    const value = NUMERIC_FIELDS.has(field.kind) ? this.integer() : this.quoted();
    return { negated, field, op, value };
  }

  private field(): SearchField {
    const rest = this.s.slice(this.at);
    if (rest.startsWith('metadata[')) {
      this.at += 'metadata['.length;
      const key = this.quoted();
      if (this.s[this.at] !== ']') throw new QueryError('metadata key must be closed with ]');
      this.at++;
      if (key === '' || key.length > 40) throw new QueryError('metadata keys are 1 to 40 characters');
      return { kind: 'metadata', key };
    }
    const name = /^[a-z_]+/.exec(rest)?.[0];
    if (name === 'status' || name === 'currency' || name === 'amount' || name === 'created') {
      this.at += name.length;
      return { kind: name };
    }
    throw new QueryError(name ? `field ${name} is not supported` : `a field was expected at position ${this.at}`);
  }

  private op(): SearchOp {
    const m = /^(>=|<=|:|>|<)/.exec(this.s.slice(this.at));
    if (!m) throw new QueryError(`an operator (: > < >= <=) was expected at position ${this.at}`);
    this.at += m[1]!.length;
    return m[1] as SearchOp;
  }

  private quoted(): string {
    const quote = this.s[this.at];
    if (quote !== "'" && quote !== '"') throw new QueryError(`a quoted value was expected at position ${this.at}`);
    let out = '';
    for (let i = this.at + 1; i < this.s.length; i++) {
      const c = this.s[i]!;
      if (c === '\\' && i + 1 < this.s.length) {
        out += this.s[++i]!;
      } else if (c === quote) {
        this.at = i + 1;
        return out;
      } else {
        out += c;
      }
    }
    throw new QueryError('unterminated quoted value');
  }

  private integer(): number {
    const m = /^-?\d{1,15}/.exec(this.s.slice(this.at));
    if (!m) throw new QueryError(`an integer was expected at position ${this.at}`);
    this.at += m[0].length;
    return Number(m[0]);
  }
}

const SQL_OPS: Readonly<Record<SearchOp, string>> = { ':': '=', '>': '>', '<': '<', '>=': '>=', '<=': '<=' };

/** WHERE fragment over sandbox_stripe_payment_intents; its bind parameters are numbered from `firstParam`. */
export function compileSearch(query: SearchQuery, firstParam: number): { sql: string; params: unknown[] } {
  const params: unknown[] = [];
  const next = (v: unknown) => {
    params.push(v);
    return `$${firstParam + params.length - 1}`;
  };
  const parts = query.clauses.map((c) => {
    let sql: string;
    switch (c.field.kind) {
      case 'metadata':
        sql = `(object->'metadata') @> jsonb_build_object(${next(c.field.key)}::text, ${next(String(c.value))}::text)`;
        break;
      case 'status':
        sql = `status = ${next(String(c.value))}`;
        break;
      case 'currency':
        sql = `currency = lower(${next(String(c.value))})`;
        break;
      case 'amount':
        sql = `amount ${SQL_OPS[c.op]} ${next(c.value)}::bigint`;
        break;
      case 'created':
        sql = `created ${SQL_OPS[c.op]} ${next(c.value)}::bigint`;
        break;
    }
    return c.negated ? `NOT (${sql})` : `(${sql})`;
  });
  return { sql: `(${parts.join(` ${query.join} `)})`, params };
}
