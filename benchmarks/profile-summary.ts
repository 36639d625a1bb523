// Reads .cpuprofile files (node --cpu-prof, e.g. from `npm run bench -- --profile`)
// and prints the functions with the most self time, and the garbage collector's
// total, so that a profile can be read without Chrome DevTools.
import path from 'node:path';
import { parseArgs } from 'node:util';
import { findProfiles, formatProfileSummary, summariseProfiles, threadOfProfile } from './profiles';

const usage = `Usage: node dist/benchmarks/profile-summary.js [options] PATH...
  PATH          a .cpuprofile file, or a directory searched for them (e.g. a
                benchmarks/results/<timestamp>-profiles directory)
  --top N       functions shown per summary (default 25)
  --merge       one summary of every profile found, instead of one per profile
  -h, --help
`;

function main(): void {
  let parsed;
  try {
    parsed = parseArgs({
      options: { top: { type: 'string', default: '25' }, merge: { type: 'boolean', default: false }, help: { type: 'boolean', short: 'h', default: false } },
      allowPositionals: true,
      strict: true,
    });
  } catch (error) {
    process.stderr.write(`profile-summary: ${(error as Error).message}\n${usage}`);
    process.exit(2);
  }
  const { values, positionals } = parsed;
  if (values.help || positionals.length === 0) {
    process.stdout.write(usage);
    process.exit(values.help ? 0 : 2);
  }
  const top = Number(values.top);
  if (!Number.isInteger(top) || top < 1) {
    process.stderr.write(`profile-summary: --top must be a positive integer, got "${values.top}"\n`);
    process.exit(2);
  }
  const files = positionals.flatMap((target) => findProfiles(path.resolve(target)));
  if (files.length === 0) {
    process.stderr.write(`profile-summary: no .cpuprofile file under ${positionals.join(', ')}\n`);
    process.exit(1);
  }
  const groups = values.merge ? [files] : files.map((file) => [file]);
  const sections = groups.map((group) => {
    const title = group.length === 1 ? `${path.relative(process.cwd(), group[0])} (${threadOfProfile(group[0])})` : `${group.length} profiles merged`;
    return `== ${title}\n${formatProfileSummary(summariseProfiles(group), top)}`;
  });
  process.stdout.write(`${sections.join('\n\n')}\n`);
}

main();
