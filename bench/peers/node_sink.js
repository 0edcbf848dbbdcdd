'use strict';
/*
 * The Node peer of the txsmtpsrv benchmark (bench/_peers.py, kind "node"): an SMTP sink on
 * Nodemailer's smtp-server that reads every message body and throws it away.
 *
 * Listens on 127.0.0.1, port 0, writes one line "READY <port> <pid> <detail>" to stdout, as
 * every benchmark server does, then serves until killed (bench/_peers.py sets
 * PR_SET_PDEATHSIG before exec'ing node, and this process also exits when its parent goes).
 *
 *   node node_sink.js [--cert PEM --key PEM] [--greeting-delay-ms N]
 *
 * smtp-server waits a hard-coded 100 ms before every greeting to catch early talkers.  That
 * is a policy, not a cost of the machinery, and it caps a 20-session churn run at 200
 * connections/s, so by default the sink replaces SMTPConnection.prototype.init with the same
 * code minus the timer (--greeting-delay-ms 100 restores the stock behaviour).  The patch
 * is checked against the pinned smtp-server version (bench/_toolchains.py).
 *
 * smtp-server is resolved from NODE_PATH (the benchmark installs it into a cache directory
 * outside the repository).
 */

const fs = require('fs');
const { SMTPServer } = require('smtp-server');
const { SMTPConnection } = require('smtp-server/lib/smtp-connection.js');
const serverVersion = require('smtp-server/package.json').version;

const IDLE_TIMEOUT_MS = 300 * 1000;

function parseArgs(argv) {
    const opts = { cert: null, key: null, greetingDelayMs: 0 };
    for (let i = 0; i < argv.length; i++) {
        const arg = argv[i];
        const value = argv[i + 1];
        if (arg === '--cert' && value !== undefined) {
            opts.cert = value;
        } else if (arg === '--key' && value !== undefined) {
            opts.key = value;
        } else if (arg === '--greeting-delay-ms' && /^\d+$/.test(value || '')) {
            opts.greetingDelayMs = Number(value);
        } else {
            process.stderr.write(`usage: node node_sink.js [--cert PEM --key PEM] [--greeting-delay-ms N]; bad argument ${arg}\n`);
            process.exit(2);
        }
        i++;
    }
    if ((opts.cert === null) !== (opts.key === null)) {
        process.stderr.write('--cert and --key go together\n');
        process.exit(2);
    }
    return opts;
}

function patchGreetingDelay(delayMs) {
    if (typeof SMTPConnection.prototype.init !== 'function' ||
        typeof SMTPConnection.prototype._setListeners !== 'function' ||
        typeof SMTPConnection.prototype.connectionReady !== 'function') {
        throw new Error(`smtp-server ${serverVersion}: SMTPConnection has no init/_setListeners/connectionReady to patch`);
    }
    if (delayMs === 100) {
        return; // the stock code
    }
    SMTPConnection.prototype.init = function init() {
        this._setListeners(() => {
            if (this._server.options.maxClients && this._server.connections.size > this._server.options.maxClients) {
                return this.send(421, this.name + ' Too many connected clients, try again in a moment', false);
            }
            if (delayMs > 0) {
                setTimeout(() => this.connectionReady(), delayMs).unref();
            } else {
                this.connectionReady();
            }
        });
    };
}

function main() {
    const opts = parseArgs(process.argv.slice(2));
    patchGreetingDelay(opts.greetingDelayMs);
    const tls = opts.cert !== null;
    const server = new SMTPServer({
        name: 'bench',
        banner: 'bench',
        size: 64 * 1024 * 1024,
        authOptional: true,
        disabledCommands: tls ? ['AUTH'] : ['AUTH', 'STARTTLS'],
        disableReverseLookup: true,
        logger: false,
        socketTimeout: IDLE_TIMEOUT_MS,
        closeTimeout: 1000,
        ...(tls ? { key: fs.readFileSync(opts.key), cert: fs.readFileSync(opts.cert) } : {}),
        onData(stream, session, callback) {
            // Read the body (smtp-server undoes the dot-stuffing) and keep nothing.
            stream.on('data', () => {});
            stream.on('end', () => callback(null));
            stream.on('error', callback);
        }
    });
    server.on('error', err => {
        process.stderr.write(`smtp-server error: ${err && err.stack ? err.stack : err}\n`);
    });
    server.listen(0, '127.0.0.1', () => {
        const port = server.server.address().port;
        process.stdout.write(
            `READY ${port} ${process.pid} smtp-server=${serverVersion} node=${process.version} ` +
            `greeting_delay_ms=${opts.greetingDelayMs} tls=${tls ? 'starttls' : 'off'}\n`
        );
    });
    // Die with the parent even if PR_SET_PDEATHSIG was not set (node cannot set it itself).
    const parent = process.ppid;
    setInterval(() => {
        if (process.ppid !== parent) {
            process.exit(1);
        }
    }, 1000).unref();
    process.on('SIGTERM', () => process.exit(0));
}

main();
