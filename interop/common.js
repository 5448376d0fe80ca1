'use strict';
// Helpers shared by server.js and client.js: JSON-line output and a JSON-safe copy of
// arbitrary JS values (errors keep their name, message and own fields; binary becomes the
// sc-formatter {"base64":true,"data":...} shape; functions are dropped).

const fs = require('fs');

function isBinary(v) {
  return (typeof Buffer !== 'undefined' && Buffer.isBuffer(v)) ||
    v instanceof ArrayBuffer || ArrayBuffer.isView(v);
}

function toBase64(v) {
  if (Buffer.isBuffer(v)) return v.toString('base64');
  if (v instanceof ArrayBuffer) return Buffer.from(v).toString('base64');
  return Buffer.from(v.buffer, v.byteOffset, v.byteLength).toString('base64');
}

// A JSON-safe deep copy of `value`. Cycles become the string "[Circular]".
function plain(value, seen) {
  seen = seen || new Set();
  if (value === undefined || typeof value === 'function' || typeof value === 'symbol') {
    return undefined;
  }
  if (value === null || typeof value !== 'object') {
    if (typeof value === 'bigint') return value.toString();
    if (typeof value === 'number' && !Number.isFinite(value)) return null;
    return value;
  }
  if (isBinary(value)) {
    return {base64: true, data: toBase64(value)};
  }
  if (value instanceof Date) {
    return value.toISOString();
  }
  if (seen.has(value)) {
    return '[Circular]';
  }
  seen.add(value);
  try {
    if (Array.isArray(value)) {
      return value.map((v) => {
        let p = plain(v, seen);
        return p === undefined ? null : p;
      });
    }
    let out = {};
    if (value instanceof Error) {
      out.name = value.name;
      out.message = value.message;
    }
    for (let key of Object.keys(value)) {
      if (key === 'stack') continue;
      let p = plain(value[key], seen);
      if (p !== undefined) out[key] = p;
    }
    return out;
  } finally {
    seen.delete(value);
  }
}

// {name, message, ...own fields} of an error-like value (strings and other values are
// wrapped so that the result is always an object with a name).
function errorInfo(err) {
  if (err instanceof Error) return plain(err);
  if (err && typeof err === 'object') {
    let p = plain(err);
    if (p.name == null) p.name = 'Error';
    return p;
  }
  return {name: 'Error', message: String(err), value: plain(err)};
}

let exiting = false;

// Print one event line: the object plus a "t" millisecond timestamp. Nothing is printed
// once the process is exiting.
function out(obj) {
  if (exiting) return;
  let line = plain(obj);
  line.t = Date.now();
  process.stdout.write(JSON.stringify(line) + '\n');
}

// Exit once everything written to stdout has reached the pipe: a long line may not fit
// in the pipe buffer, and process.exit() would cut it off.
function exitAfterFlush(code) {
  if (exiting) return;
  exiting = true;
  process.stdout.write('', () => process.exit(code));
  // If stdout is gone (reader closed), do not hang.
  setTimeout(() => process.exit(code), 5000).unref();
}

// The JSON argument of a runner: inline JSON, or "@path" naming a file that holds it.
function readJsonArg(arg) {
  if (arg == null || arg === '') return null;
  if (arg.startsWith('@')) {
    return JSON.parse(fs.readFileSync(arg.slice(1), 'utf8'));
  }
  return JSON.parse(arg);
}

// "private/*" -> /^private\/.*$/ ; an array of patterns matches if any matches.
function globMatcher(pattern) {
  if (pattern == null) return null;
  let patterns = Array.isArray(pattern) ? pattern : [pattern];
  let regexes = patterns.map((p) => new RegExp(
    '^' + String(p).split('*').map((s) => s.replace(/[.+?^${}()|[\]\\/]/g, '\\$&')).join('.*') + '$'
  ));
  return (name) => typeof name === 'string' && regexes.some((r) => r.test(name));
}

function makeError(spec, fallbackName) {
  spec = spec || {};
  let err = new Error(spec.message == null ? 'error' : spec.message);
  err.name = spec.name || fallbackName || 'Error';
  for (let key of Object.keys(spec)) {
    if (key !== 'name' && key !== 'message') err[key] = spec[key];
  }
  return err;
}

module.exports = {plain, errorInfo, out, exitAfterFlush, readJsonArg, globMatcher, makeError};
