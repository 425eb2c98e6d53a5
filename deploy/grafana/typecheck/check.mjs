// Type-checks a Grafana dashboard JSON file against @grafana/schema's Dashboard type:
//   node check.mjs <dashboard.json>
// A JSON module import would widen every string to `string`, so enum and literal fields
// could not be checked; the JSON is embedded as an object literal typed DashboardJson
// instead, which also makes tsc reject unknown (misspelt) keys. Exit code: tsc's.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const [source] = process.argv.slice(2);
if (!source) {
  console.error('usage: node check.mjs <dashboard.json>');
  process.exit(2);
}
const dashboard = JSON.parse(readFileSync(source, 'utf8')); // invalid JSON fails here
const work = mkdtempSync(join(tmpdir(), 'dashboard-typecheck-'));
try {
  const schema = JSON.stringify(join(here, 'schema'));
  writeFileSync(
    join(work, 'dashboard.ts'),
    // One line before the literal, so tsc's line numbers are those of a file formatted as
    // JSON.stringify(dashboard, null, 2) writes it (the committed dashboard is).
    `import type { DashboardJson } from ${schema}; export const dashboard: DashboardJson = ` +
      `${JSON.stringify(dashboard, null, 2)};\n`,
  );
  writeFileSync(
    join(work, 'tsconfig.json'),
    JSON.stringify({ extends: join(here, 'tsconfig.json'), files: ['dashboard.ts'] }),
  );
  const tsc = join(here, 'node_modules', 'typescript', 'bin', 'tsc');
  const run = spawnSync(process.execPath, [tsc, '--noEmit', '-p', '.'], {
    cwd: work,
    encoding: 'utf8',
  });
  // Name the checked file, not the temporary copy, in tsc's messages.
  process.stdout.write((run.stdout ?? '').replaceAll('dashboard.ts(', `${resolve(source)}(`));
  process.stderr.write(run.stderr ?? '');
  process.exitCode = run.status ?? 1;
} finally {
  rmSync(work, { recursive: true, force: true });
}
