/*
 * Test-only stand-ins for the ServiceNow globals our scripts use, so that
 * console_adapters/servicenow/*.js run under node against a real gateway. This is the one mock
 * the ServiceNow tests allow: no ServiceNow instance runs here.
 *
 *   node servicenow_shim.js <scenario.json>
 * scenario: {properties, user_id, scripts: [paths, loaded in order as the instance would],
 *            current: {sys_id, fields} (a GlideRecord), inputs (a flow step's inputs),
 *            run: a script path to execute last, or expression: JS to evaluate last}
 * prints JSON: {result, outputs, errors (gs.error), requests [{method, url, status}], threw}
 *
 * sn_ws.RESTMessageV2.execute() makes a real, synchronous HTTP call: a child node process does
 * the request and prints the answer (ServiceNow's execute() blocks the same way).
 */
'use strict';
const fs = require('fs');
const vm = require('vm');
const crypto = require('crypto');
const childProcess = require('child_process');

const scenario = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const report = {result: null, outputs: null, errors: [], requests: [], threw: null};

const HTTP_CHILD = `
const {URL} = require('url');
let input = '';
process.stdin.on('data', (c) => { input += c; });
process.stdin.on('end', () => {
  const req = JSON.parse(input);
  const url = new URL(req.url);
  const lib = require(url.protocol === 'https:' ? 'https' : 'http');
  const r = lib.request(url, {method: req.method, headers: req.headers, timeout: req.timeout},
    (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => process.stdout.write(JSON.stringify({
        status: res.statusCode, headers: res.headers,
        body: Buffer.concat(chunks).toString('utf8')})));
    });
  r.on('timeout', () => r.destroy(new Error('timed out')));
  r.on('error', (e) => process.stdout.write(JSON.stringify({status: 0, headers: {},
    body: '', error: e.message})));
  r.end(req.body);
});`;

class RESTResponseV2 {
    constructor(answer) { this.answer = answer; }
    getStatusCode() { return this.answer.status; }
    getBody() { return this.answer.body; }
    getHeader(name) { return this.answer.headers[String(name).toLowerCase()] || null; }
    haveError() { return this.answer.status === 0 || this.answer.status >= 400; }
    getErrorMessage() { return this.answer.error || ''; }
}

class RESTMessageV2 {
    constructor() { this.headers = {}; this.method = 'GET'; this.body = ''; this.timeout = 60000; }
    setEndpoint(url) { this.url = url; }
    setHttpMethod(method) { this.method = String(method).toUpperCase(); }
    setRequestHeader(name, value) { this.headers[name] = String(value); }
    setRequestBody(body) { this.body = String(body); }
    setHttpTimeout(ms) { this.timeout = ms; }
    execute() {
        const out = childProcess.execFileSync(process.execPath, ['-e', HTTP_CHILD], {
            input: JSON.stringify({url: this.url, method: this.method, headers: this.headers,
                body: this.body, timeout: this.timeout}),
        });
        const answer = JSON.parse(out.toString('utf8'));
        report.requests.push({method: this.method, url: this.url, status: answer.status});
        return new RESTResponseV2(answer);
    }
}

class GlideRecord {
    constructor(spec) { this.sysId = spec.sys_id; this.fields = spec.fields || {}; }
    getValue(name) {
        const v = name === 'sys_id' ? this.sysId : this.fields[name];
        return v === undefined || v === null || v === '' ? null : String(v);
    }
    getUniqueValue() { return this.sysId; }
    getDisplayValue(name) { return this.getValue(name); }
    getTableName() { return 'incident'; }
}

const globals = {
    Class: {create: () => function () { this.initialize.apply(this, arguments); }},
    gs: {
        getProperty: (name, fallback) => (name in scenario.properties ?
            scenario.properties[name] : (fallback === undefined ? null : fallback)),
        getUserID: () => scenario.user_id,
        error: (msg) => report.errors.push(String(msg)),
        info: () => {},
        debug: () => {},
        sleep: (ms) => Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms),
    },
    GlideStringUtil: {base64Encode: (s) => Buffer.from(String(s), 'utf8').toString('base64')},
    GlideCertificateEncryption: class {
        generateMac(base64Key, algorithm, data) {
            if (algorithm !== 'HmacSHA256') throw new Error('shim: only HmacSHA256');
            return crypto.createHmac('sha256', Buffer.from(base64Key, 'base64'))
                .update(String(data), 'utf8').digest('base64');
        }
    },
    GlideDateTime: class { getNumericValue() { return Date.now(); } },
    sn_ws: {RESTMessageV2},
    current: scenario.current ? new GlideRecord(scenario.current) : null,
    previous: null,
    inputs: scenario.inputs || {},
    outputs: {},
};
Object.assign(globalThis, globals);

try {
    for (const path of scenario.scripts || []) {
        vm.runInThisContext(fs.readFileSync(path, 'utf8'), {filename: path});
    }
    if (scenario.run) {
        vm.runInThisContext(fs.readFileSync(scenario.run, 'utf8'), {filename: scenario.run});
    }
    if (scenario.expression) {
        report.result = vm.runInThisContext(scenario.expression);
    }
} catch (e) {
    report.threw = String(e && e.message ? e.message : e);
}
report.outputs = globalThis.outputs;
process.stdout.write(JSON.stringify(report));
