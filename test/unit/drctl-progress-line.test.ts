// Goal: drctl's progress line fits any terminal width it is given (the detail
// is cut first, then the label; the numbers only when they alone are wider),
// and the smoothed rate and its ETA follow a steady transfer, start again
// when the count goes back, and say nothing before they have measured.
import t from 'tap';
import { cut, fitLine, fitStatusLine, formatEta, numbersText, plainLine, RateMeter, type BarFields } from '../../daemons/drctl/progress';

const MiB = 1024 * 1024;
const seed = Number(process.env.DRPLANE_SEED ?? Date.now() % 100_000);

function random(seedValue: number): () => number {
  let state = seedValue >>> 0 || 1;
  return () => {
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    return (state >>> 0) / 2 ** 32;
  };
}

t.test('a line never exceeds the width, and keeps the numbers whole where they fit', async (t) => {
  t.comment(`seed ${seed}`);
  const next = random(seed);
  for (let round = 0; round < 2_000; round++) {
    const width = 10 + Math.floor(next() * 200);
    const total = Math.floor(next() * 4 * 1024 * 1024 * MiB);
    const fields: BarFields = {
      label: ['initial-sync', 'materialise', 'a-very-long-step-name-that-goes-on'][Math.floor(next() * 3)]!,
      bytesDone: Math.floor(next() * total),
      bytesTotal: total,
      bytesPerSecond: next() * 500 * MiB,
      etaMs: Math.floor(next() * 10_000_000),
      detail: 'vm1-disk0 first scan pass: 120 MiB of data found, 12.0 MiB to apply '.repeat(Math.floor(next() * 4)),
    };
    const line = fitLine(fields, width);
    if (line.length > width) t.fail(`width ${width}: ${JSON.stringify(line)} is ${line.length} long`);
    const numbers = numbersText(fields).trimEnd();
    if (width >= numbers.length + 2 && !line.includes(numbers.trim())) t.fail(`width ${width}: the numbers ${JSON.stringify(numbers)} were cut in ${JSON.stringify(line)}`);
    const status = fitStatusLine(fields.label, 'running 3.2 s', fields.detail, width);
    if (status.length > width) t.fail(`width ${width}: ${JSON.stringify(status)} is ${status.length} long`);
  }
  t.pass('2000 random lines fit');
});

t.test('at 100 columns: bar, numbers, and as much detail as fits', async (t) => {
  const line = fitLine({ label: 'initial-sync', bytesDone: 460 * MiB, bytesTotal: 1024 * MiB, bytesPerSecond: 250 * MiB, etaMs: 2_300, detail: 'vm1-disk0 first scan pass: 230 MiB of data found, 20.0 MiB to apply' }, 99);
  t.equal(line.length, 99, 'the detail fills the line');
  t.match(line, /^initial-sync \[#+-+\]  44%   460 MiB of 1\.0 GiB   250 MiB\/s ETA 3s +vm1-disk0 first scan.*…$/);
  // The bar leaves room for a detail even when there is none, so it keeps its width when one comes.
  t.equal(fitLine({ label: 'backup', bytesDone: 0, bytesTotal: 0, bytesPerSecond: 0, etaMs: 0, detail: '' }, 80), `backup [${'-'.repeat(8)}]   0%       0 B of 0 B         -/s ETA -`);
  t.equal(fitLine({ label: 'backup', bytesDone: 0, bytesTotal: 0, bytesPerSecond: 0, etaMs: 0, detail: '' }, 120), `backup [${'-'.repeat(24)}]   0%       0 B of 0 B         -/s ETA -`);
  t.equal(plainLine({ label: 'initial-sync', bytesDone: 460 * MiB, bytesTotal: 1024 * MiB, bytesPerSecond: 0, etaMs: 0, detail: 'a  b' }), 'initial-sync 44% 460 MiB of 1.0 GiB -/s ETA - (a b)');
  t.equal(cut('abcdef', 4), 'abc…');
});

t.test('the ETA reads as a duration', async (t) => {
  t.equal(formatEta(0), '-');
  t.equal(formatEta(1), '1s');
  t.equal(formatEta(59_000), '59s');
  t.equal(formatEta(65_000), '1m05s');
  t.equal(formatEta(3 * 3_600_000 + 120_000), '3h02m');
});

t.test('the smoothed rate and ETA', async (t) => {
  const meter = new RateMeter();
  meter.sample(0, 0);
  meter.sample(50 * MiB, 500);
  t.equal(meter.bytesPerSecond(), 0, 'nothing said before the warm-up');
  for (let timeMs = 1_000; timeMs <= 10_000; timeMs += 300) meter.sample((timeMs / 1_000) * 100 * MiB, timeMs);
  t.ok(Math.abs(meter.bytesPerSecond() - 100 * MiB) < 2 * MiB, `a steady 100 MiB/s is measured as such (${(meter.bytesPerSecond() / MiB).toFixed(1)})`);
  const done = 10 * 100 * MiB;
  t.ok(Math.abs(meter.etaMs(done + 500 * MiB) - 5_000) < 200, `500 MiB left at 100 MiB/s is about 5 s (${meter.etaMs(done + 500 * MiB)})`);
  // A stall of one poll moves the rate a little, not to zero.
  meter.sample(done, 10_300);
  t.ok(meter.bytesPerSecond() > 80 * MiB, `one stalled poll does not swing the rate (${(meter.bytesPerSecond() / MiB).toFixed(1)})`);
  meter.sample(10 * MiB, 10_600);
  t.equal(meter.bytesPerSecond(), 0, 'a count that goes back starts the measure again');
  t.equal(meter.etaMs(done), 0, 'and there is no ETA until it has measured again');
});
