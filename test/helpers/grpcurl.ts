// The real grpcurl (github.com/fullstorydev/grpcurl), as operators run it:
// ../shared/tools/grpcurl beside the repository (see its README), or one on
// PATH. Tests that need it skip with a message naming both places when
// neither has it.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { repoRoot } from './daemons';

export const grpcurlPlaces = [path.join(repoRoot, '..', 'shared', 'tools', 'grpcurl'), 'grpcurl on PATH'];

/** The grpcurl to run, or undefined when neither place has one. */
export function findGrpcurl(): string | undefined {
  const beside = grpcurlPlaces[0]!;
  if (fs.existsSync(beside)) return beside;
  const onPath = spawnSync('sh', ['-c', 'command -v grpcurl'], { encoding: 'utf8' });
  return onPath.status === 0 && onPath.stdout.trim() ? onPath.stdout.trim() : undefined;
}

export const grpcurlMissing = `grpcurl is in neither ${grpcurlPlaces[0]} nor on PATH (see ../shared/tools/README.md)`;

export interface GrpcurlRun {
  status: number | null;
  stdout: string;
  stderr: string;
}

export function grpcurl(binary: string, args: string[]): GrpcurlRun {
  const run = spawnSync(binary, args, { encoding: 'utf8', timeout: 30_000 });
  return { status: run.status, stdout: run.stdout, stderr: run.stderr };
}
