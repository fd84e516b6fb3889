// A heartbeat writer in Node.js: COPY a batch of heartbeats into pybatch.heartbeats
// with pg-copy-streams, flush, and read the agents back.
//
//   cd examples/node && npm ci && PYBATCH_DSN=postgresql://... node copy_writer.js
//
// The only contract used is pybatch's SQL contract: COPY (or INSERT) into the UNLOGGED
// staging table pybatch.heartbeats (agent_id, replica_id, beat_at), then the flush,
// CALL pybatch.flush_in_passes(), which a pg_cron job or `pybatch scheduler` normally runs
// every few seconds.
'use strict';

const { Client } = require('pg');
const { from: copyFrom } = require('pg-copy-streams');
const { pipeline } = require('node:stream/promises');
const { Readable } = require('node:stream');

// Fixed ids so that running the example twice updates the same rows.
const AGENTS = [
  'e0000000-0000-4000-8000-00000000a001',
  'e0000000-0000-4000-8000-00000000a002',
  'e0000000-0000-4000-8000-00000000a003',
];
const REPLICA = 'e0000000-0000-4000-8000-0000000000fe';

// node-postgres takes a URI (postgresql://user@host:5432/db); libpq's keyword=value form
// (host=... dbname=...), which pybatch also accepts, is translated here.
function clientConfig(dsn) {
  if (/^postgres(ql)?:\/\//.test(dsn)) return { connectionString: dsn };
  const names = { host: 'host', hostaddr: 'host', port: 'port', user: 'user', password: 'password', dbname: 'database' };
  const config = {};
  const pattern = /(\w+)\s*=\s*(?:'((?:[^'\\]|\\.)*)'|(\S+))/g;
  for (const [, key, quoted, plain] of dsn.matchAll(pattern)) {
    if (!(key in names)) throw new Error(`PYBATCH_DSN: ${key} is not supported by this example; use a URI`);
    config[names[key]] = quoted !== undefined ? quoted.replace(/\\(.)/g, '$1') : plain;
  }
  return config;
}

async function main() {
  const dsn = process.env.PYBATCH_DSN;
  if (!dsn) {
    console.error('set PYBATCH_DSN to the database pybatch was migrated into');
    process.exit(2);
  }
  const client = new Client(clientConfig(dsn));
  await client.connect();
  try {
    // An agent must exist in workspace_agents before its heartbeats count: in Coder the
    // control plane creates the row when it builds a workspace. Here we create them.
    await client.query(
      'INSERT INTO public.workspace_agents (id) SELECT unnest($1::uuid[]) ON CONFLICT (id) DO NOTHING',
      [AGENTS],
    );

    // One COPY carries the whole batch: three heartbeats per agent, the newest wins.
    const now = Date.now();
    const lines = [];
    for (const agent of AGENTS) {
      for (let k = 2; k >= 0; k -= 1) {
        lines.push(`${agent}\t${REPLICA}\t${new Date(now - k * 1000).toISOString()}\n`);
      }
    }
    const copy = client.query(copyFrom('COPY pybatch.heartbeats (agent_id, replica_id, beat_at) FROM STDIN'));
    await pipeline(Readable.from(lines), copy);
    console.log(`copied ${copy.rowCount} heartbeats into pybatch.heartbeats`);

    // Normally the scheduled job does this; here we flush once to see the result now.
    // CALL commits between passes, so it runs outside a transaction block (as here).
    await client.query('CALL pybatch.flush_in_passes()');
    const flushed = await client.query('SELECT rows_staged, agents_updated FROM pybatch.flush_history LIMIT 1');
    const f = flushed.rows[0];
    console.log(`flush: rows_staged=${f.rows_staged} agents_updated=${f.agents_updated}`);

    const rows = await client.query(
      `SELECT a.id, a.last_connected_at, a.last_connected_replica_id, s.status
         FROM public.workspace_agents a JOIN pybatch.agent_status s ON s.agent_id = a.id
        WHERE a.id = ANY($1::uuid[]) ORDER BY a.id`,
      [AGENTS],
    );
    for (const row of rows.rows) {
      console.log(`${row.id} ${row.status} last_connected_at=${row.last_connected_at.toISOString()}`);
    }
  } finally {
    await client.end();
  }
}

main().catch((err) => {
  console.error(`copy_writer: ${err.message}`);
  process.exit(1);
});
