// Goal: the README's walkthrough works as written. Starts the all-in-one stack
// (what `npm start` runs after building) in a scratch folder, then runs the
// README's walkthrough block with bash, unchanged, and checks what it printed.
// It uses the README's fixed ports (7100-7103): they must be free.
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { spawn, spawnSync } from 'node:child_process';
import { distRoot, repoRoot, tempDir } from '../helpers/daemons';

function walkthrough(): string {
  const readme = fs.readFileSync(path.join(repoRoot, 'README.md'), 'utf8');
  const block = /<!-- walkthrough:start -->\s*```sh\n([\s\S]*?)```\s*<!-- walkthrough:end -->/.exec(readme);
  if (!block) throw new Error('README.md has no walkthrough block');
  return block[1];
}

t.test('the README walkthrough runs as written against npm start', async (t) => {
  const dir = tempDir('drplane-readme-');
  fs.symlinkSync(distRoot, path.join(dir, 'dist'));
  const stack = spawn(process.execPath, [path.join(distRoot, 'daemons', 'all-in-one', 'main.js')], { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
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
  t.match(output, /configuration server\s+127\.0\.0\.1:7100/, 'npm start prints the addresses');

  const script = `set -euo pipefail\n${walkthrough()}`;
  const run = spawnSync('bash', ['-c', script], { cwd: dir, encoding: 'utf8', timeout: 180_000 });
  t.comment(run.stdout);
  t.equal(run.status, 0, `the walkthrough exits 0${run.status === 0 ? '' : `:\n${run.stderr}`}`);
  t.equal(run.stdout.match(/restored copy is identical/g)?.length, 2, 'both restored copies equal the source');
  t.match(run.stdout, /job-1 \(enable-replication\) succeeded/, 'enable succeeded');
  t.match(run.stdout, /\(resync\) succeeded/, 'resync succeeded');
  t.match(run.stdout, /vm1-disk0@\d+\s+crash-consistent/, 'points are listed');
  const stopping = exited;
  stack.kill('SIGTERM');
  t.equal(await stopping, 0, 'Ctrl-C (SIGTERM) stops the stack cleanly');
});
