// Goal: the README's walkthrough works as written. Starts the all-in-one stack
// (what `npm start` runs after building) in a scratch folder, then runs the
// README's walkthrough block with bash, unchanged, and checks what it printed.
// It uses the README's fixed ports (7100-7103): they must be free.
import t, { type Test } from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { spawn, spawnSync } from 'node:child_process';
import { distRoot, repoRoot, tempDir, withoutTapHook } from '../helpers/daemons';
import { findGrpcurl, grpcurlMissing } from '../helpers/grpcurl';

function walkthrough(name = 'walkthrough'): string {
  const readme = fs.readFileSync(path.join(repoRoot, 'README.md'), 'utf8');
  const block = new RegExp(`<!-- ${name}:start -->\\s*\`\`\`sh\\n([\\s\\S]*?)\`\`\`\\s*<!-- ${name}:end -->`).exec(readme);
  if (!block) throw new Error(`README.md has no ${name} block`);
  return block[1]!;
}

/** The all-in-one stack (what `npm start` runs after building) in a scratch folder, until the test ends. */
async function startAllInOne(t: Test, args: string[] = []): Promise<{ dir: string; output: () => string; stop: () => Promise<number | null> }> {
  const dir = tempDir('drplane-readme-');
  fs.symlinkSync(distRoot, path.join(dir, 'dist'));
  const [command, ...commandArgs] = withoutTapHook([process.execPath, path.join(distRoot, 'daemons', 'all-in-one', 'main.js'), ...args]);
  const stack = spawn(command!, commandArgs, { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  stack.stdout.on('data', (chunk: Buffer) => (output += chunk.toString()));
  stack.stderr.on('data', (chunk: Buffer) => (output += chunk.toString()));
  const exited = new Promise<number | null>((resolve) => stack.once('exit', (code) => resolve(code)));
  t.teardown(async () => {
    stack.kill('SIGTERM');
    await exited;
    fs.rmSync(dir, { recursive: true, force: true });
  });
  await new Promise<void>((resolve, reject) => {
    const timer = setInterval(() => {
      if (output.includes('drplane is running')) {
        clearInterval(timer);
        resolve();
      }
    }, 100);
    void exited.then((code) => {
      clearInterval(timer);
      reject(new Error(`the stack exited (${code}) before it was running:\n${output}`));
    });
  });
  return {
    dir,
    output: () => output,
    stop: async () => {
      stack.kill('SIGTERM');
      return exited;
    },
  };
}

function runBlock(t: Test, dir: string, name: string, pathPrefix?: string): ReturnType<typeof spawnSync> & { stdout: string; stderr: string } {
  // The block's background agents stop with it, also when a command in it fails.
  const script = `set -euo pipefail\ntrap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n${walkthrough(name)}`;
  const [command, ...commandArgs] = withoutTapHook(['bash', '-c', script]);
  const env = pathPrefix ? { ...process.env, PATH: `${pathPrefix}:${process.env.PATH}` } : process.env;
  const run = spawnSync(command!, commandArgs, { cwd: dir, encoding: 'utf8', timeout: 240_000, env });
  t.comment(run.stdout);
  t.equal(run.status, 0, `the ${name} block exits 0${run.status === 0 ? '' : `:\n${run.stderr}`}`);
  return run;
}

t.test('the README walkthrough runs as written against npm start', async (t) => {
  const stack = await startAllInOne(t);
  t.match(stack.output(), /configuration server\s+127\.0\.0\.1:7100/, 'npm start prints the addresses');
  const run = runBlock(t, stack.dir, 'walkthrough');
  t.equal(run.stdout.match(/restored copy is identical/g)?.length, 2, 'both restored copies equal the source');
  t.match(run.stdout, /job-1 \(enable-replication\) succeeded/, 'enable succeeded');
  t.match(run.stdout, /\(resync\) succeeded/, 'resync succeeded');
  t.match(run.stdout, /vm1-disk0@\d+\s+crash-consistent/, 'points are listed');

  // The README's grpcurl block, with the real grpcurl, against the same stack.
  const grpcurl = findGrpcurl();
  await t.test('the README grpcurl block runs as written', { skip: grpcurl ? false : grpcurlMissing }, async (t) => {
    const calls = runBlock(t, stack.dir, 'grpcurl', path.dirname(grpcurl!));
    t.match(calls.stdout, /drplane\.v1\.ConfigurationServer/, 'list names the configuration server');
    t.match(calls.stdout, /string disk_id = 1;/, 'describe shows the .proto field names');
    t.equal(calls.stdout.match(/"status": "SERVING"/g)?.length, 3, 'the three daemons are SERVING');
    t.match(calls.stdout, /"rpo_ms": "\d+"/, 'the RPO of vm1-disk0');
    t.match(calls.stdout, /"state": "JOB_SUCCEEDED"/, 'the test failover job succeeded');
  });
  t.equal(await stack.stop(), 0, 'Ctrl-C (SIGTERM) stops the stack cleanly');
});

t.test('the README failover and failback walkthrough runs as written against npm start -- --site-b', async (t) => {
  const stack = await startAllInOne(t, ['--site-b']);
  t.match(stack.output(), /127\.0\.0\.1:7105/, 'npm start -- --site-b prints the second site');
  const run = runBlock(t, stack.dir, 'failover-walkthrough');
  t.match(run.stdout, /B has every byte A had at shutdown/, 'the planned failover lost nothing');
  t.equal(run.stdout.match(/at A has every byte B had at failback/g)?.length, 2, 'both disks are back home byte for byte');
  for (const kind of ['failover', 'commit', 'reprotect', 'failback']) t.match(run.stdout, new RegExp(`\\(${kind}\\) succeeded`), `the ${kind} job succeeded`);
  t.equal(await stack.stop(), 0, 'Ctrl-C (SIGTERM) stops the stack cleanly');
});
