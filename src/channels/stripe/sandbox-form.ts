/**
 * Stripe's request encoding, parsed as Stripe parses it: `application/x-www-form-urlencoded` with
 * bracketed keys (`metadata[order]=o1`, `expand[]=x`, `allowed_payment_method_types[0]=card`),
 * for POST bodies and GET query strings alike. Bounded: pairs, depth, key length.
 */
import { createHash } from 'node:crypto';

export type FormValue = string | FormValue[] | { [key: string]: FormValue };
export type FormObject = { [key: string]: FormValue };
export type ParsedForm = { ok: true; params: FormObject } | { ok: false; message: string; param?: string };

export const MAX_FORM_PAIRS = 1000;
export const MAX_FORM_DEPTH = 5;
const MAX_KEY_CHARS = 500;
const FORBIDDEN_SEGMENTS = new Set(['__proto__', 'constructor', 'prototype']);

interface Node { kind: 'map'; entries: Map<string, Node | string>; listLike: boolean }

/** `a[b][]` → ['a', 'b', '']; null when the brackets are malformed. */
export function splitKey(key: string): string[] | null {
  const m = /^([^[\]]+)((?:\[[^[\]]*\])*)$/.exec(key);
  if (!m) return null;
  const segments = [m[1]!];
  for (const part of m[2]!.matchAll(/\[([^[\]]*)\]/g)) segments.push(part[1]!);
  return segments;
}

export function parseStripeForm(text: string): ParsedForm {
  if (/%(?![0-9A-Fa-f]{2})/.test(text)) return { ok: false, message: 'Invalid request: malformed percent-encoding' };
  const root: Node = { kind: 'map', entries: new Map(), listLike: false };
  let pairs = 0;
  for (const [key, value] of new URLSearchParams(text)) {
    if (++pairs > MAX_FORM_PAIRS) return { ok: false, message: `Invalid request: more than ${MAX_FORM_PAIRS} parameters` };
    if (value.includes('\uFFFD')) return { ok: false, message: `Invalid request: parameter ${key} is not valid UTF-8`, param: key };
    if (key.length > MAX_KEY_CHARS) return { ok: false, message: 'Invalid request: parameter name too long' };
    const segments = splitKey(key);
    if (!segments) return { ok: false, message: `Invalid request: malformed parameter name ${key}`, param: key };
    if (segments.length > MAX_FORM_DEPTH + 1) return { ok: false, message: `Invalid request: parameter ${key} is nested too deeply`, param: key };
    if (segments.some((s) => FORBIDDEN_SEGMENTS.has(s))) return { ok: false, message: `Invalid request: parameter name ${key} is not allowed`, param: key };
    const error = assign(root, segments, value, key);
    if (error) return { ok: false, message: error, param: segments[0] };
  }
  return { ok: true, params: toObject(root) };
}

function assign(root: Node, segments: string[], value: string, key: string): string | null {
  let node = root;
  for (let i = 0; i < segments.length; i++) {
    const last = i === segments.length - 1;
    let segment = segments[i]!;
    if (segment === '') {
      // `[]`: append (only inside a list).
      if (i === 0 || node.entries.size > 0 && !node.listLike) return `Invalid request: ${key} mixes a list and a hash`;
      node.listLike = true;
      segment = String(node.entries.size);
    } else if (i > 0 && /^\d+$/.test(segment)) {
      node.listLike = node.listLike || node.entries.size === 0;
    }
    const existing = node.entries.get(segment);
    if (last) {
      if (existing !== undefined) return `Invalid request: parameter ${key} given more than once`;
      node.entries.set(segment, value);
      return null;
    }
    if (typeof existing === 'string') return `Invalid request: ${key} is both a value and a hash`;
    if (existing) {
      node = existing;
    } else {
      const child: Node = { kind: 'map', entries: new Map(), listLike: false };
      node.entries.set(segment, child);
      node = child;
    }
  }
  return null;
}

function toValue(node: Node | string): FormValue {
  if (typeof node === 'string') return node;
  const keys = [...node.entries.keys()];
  if (node.listLike && keys.length > 0 && keys.every((k) => /^\d+$/.test(k))) {
    return keys.sort((a, b) => Number(a) - Number(b)).map((k) => toValue(node.entries.get(k)!));
  }
  return toObject(node);
}

function toObject(node: Node): FormObject {
  const out: FormObject = {};
  for (const [k, v] of node.entries) Object.defineProperty(out, k, { value: toValue(v), enumerable: true, writable: true, configurable: true });
  return out;
}

/** Sorted-key JSON: the same parameters always give the same text (idempotency comparison). */
export function canonicalJson(value: unknown): string {
  if (Array.isArray(value)) return '[' + value.map(canonicalJson).join(',') + ']';
  if (value && typeof value === 'object') {
    return '{' + Object.keys(value).sort().map((k) => JSON.stringify(k) + ':' + canonicalJson((value as Record<string, unknown>)[k])).join(',') + '}';
  }
  return JSON.stringify(value ?? null);
}

export function paramsSha256(method: string, path: string, params: FormObject): string {
  return createHash('sha256').update(`${method} ${path}\n${canonicalJson(params)}`).digest('hex');
}
