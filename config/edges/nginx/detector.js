// nginx with njs (Debian 12: nginx 1.22.1, libnginx-mod-http-js 0.7.9): one JSON line
// per request in the detector's native ClientRequest contract (docs/contracts.md),
// behind a version marker {"nginx":1, ...}, for input_format nginx-njs
// (detector/adapters/nginx_njs.py; docs/operations.md "Connect nginx").
//
// nginx.conf.example beside this file evaluates detector.line in the access log
// (js_set, log_format escape=none): the log phase, after the response, so $status is
// the status sent and the request body (when nginx read it into memory) is complete.
//
// What it gives: every header name in the order received with the case sent
// (r.rawHeadersIn; HTTP/2 names are lower-case on the wire), every value, the
// request id ($request_id), the time nginx read the request's first bytes, the TLS
// SNI, version, cipher and the ALPN negotiated, the body's SHA-256 and size when
// nginx kept the body in one memory buffer. What a stock nginx cannot give: any TLS
// fingerprint (no ClientHello, no JA3/JA4), the HTTP/2 fingerprint.
//
// Never log credentials: add the header names to SKIP (lower-case) to log them with
// an empty value.

var crypto = require('crypto');

var FORMAT = 1;
var SKIP = {'authorization': true, 'cookie': true, 'proxy-authorization': true};
var VERSIONS = {'1.0': '1.0', '1.1': '1.1', '2.0': '2', '3.0': '3'};

// njs 0.7 hands bytes that are not UTF-8 (in a header, the request line, the SNI) over
// as a byte string, which JSON.stringify would write as raw bytes: a line that is not
// UTF-8. Buffer's round trip writes each such byte as U+FFFD instead.
function text(v) {
    return (v === undefined || v === null) ? '' : Buffer.from(String(v)).toString();
}

// the path and query as received ($request_uri), not nginx's decoded $uri;
// an absolute-form target (http://host/path) keeps its path; a request nginx refused
// before its line was read (a 400) has none, and its line is dead-lettered
function target(r) {
    var uri = text(r.variables.request_uri);
    if (uri && uri.charAt(0) !== '/') {
        var at = uri.indexOf('://');
        var slash = at < 0 ? -1 : uri.indexOf('/', at + 3);
        uri = slash < 0 ? '/' : uri.substring(slash);
    }
    var q = uri.indexOf('?');
    return q < 0 ? [uri, ''] : [uri.substring(0, q), uri.substring(q + 1)];
}

function body(r, out) {
    // r.requestBuffer: undefined without a body; it throws when nginx wrote the body to
    // a temporary file or discarded it (a `return`, a 413): then no hash, as an edge
    // without the body
    try {
        var buf = r.requestBuffer;
        if (buf === undefined || buf === null) {
            return;
        }
        var hash = crypto.createHash('sha256').update(buf).digest('hex');
        out.body_size = buf.length;
        out.body_sha256 = hash;
    } catch (e) {
        return;
    }
}

// the request's event time: when nginx read its first bytes ($msec is the time the log
// line is written, $request_time the time since those first bytes), in ms
function start(v) {
    return Math.round(Number(v.msec) * 1000 - Number(v.request_time) * 1000) / 1000;
}

function line(r) {
    var v = r.variables;
    var t = target(r);
    var raw = r.rawHeadersIn;
    var headers = [];
    for (var i = 0; i < raw.length; i++) {
        var name = raw[i][0];
        headers.push([text(name), SKIP[name.toLowerCase()] ? '' : text(raw[i][1])]);
    }
    var out = {
        request_id: text(v.request_id),
        ts: start(v),
        client_ip: text(v.remote_addr),
        method: text(r.method),
        path: t[0],
        headers: headers
    };
    if (t[1]) {
        out.query = t[1];
    }
    var ver = VERSIONS[r.httpVersion];
    if (ver) {
        out.http_version = ver;
    }
    // HTTP/2: nginx turns :authority into a host header in front of the others
    if (ver === '2' && headers.length && headers[0][0] === 'host') {
        out.h2 = {authority: headers.shift()[1]};
    }
    var status = Number(v.status);
    if (status > 0) {
        out.response_status = status;
    }
    if (v.ssl_protocol) {
        out.tls = {version: text(v.ssl_protocol), cipher: text(v.ssl_cipher)};
        if (v.ssl_server_name) {
            out.tls.sni = text(v.ssl_server_name);
        }
        if (v.ssl_alpn_protocol) {
            out.tls.alpn = text(v.ssl_alpn_protocol);
        }
    }
    body(r, out);
    // the version marker first (njs does not keep an object's key order), so a
    // relay's syslog header in front of the object is told from the object
    return '{"nginx":' + FORMAT + ',' + JSON.stringify(out).substring(1);
}

export default {line};
