// Goal: a disk whose before-images came from the disk starts its next batches'
// reads in the thread pool, tries inline reads again every so many batches, and
// goes back to inline reads once they are cached again; a data before-image laid
// out in a slab decodes like one encoded on its own.
import t from 'tap';
import { BeforeImageSource, Slabs } from '../../daemons/master-target/before-images';
import { dataBeforeImageBytes, dataBeforeImageInto, decodeBeforeImage, encodeBeforeImage } from '../../daemons/master-target/retention-store';

t.test('inline first; from the disk, the thread pool with a periodic inline probe', async (t) => {
  const source = new BeforeImageSource();
  t.ok(source.startInline(), 'a new disk reads inline');
  source.noted(true);
  const starts = Array.from({ length: 32 }, () => source.startInline());
  t.equal(starts.filter(Boolean).length, 2, 'two inline probes in 32 batches');
  t.same(starts.slice(0, 15), Array(15).fill(false), 'the batches after a disk read start in the pool');
  t.ok(starts[15], 'the 16th batch probes inline');
  source.noted(false);
  t.ok(source.startInline(), 'cached again: inline');
});

t.test('a before-image in a slab is the same bytes as one encoded alone', async (t) => {
  const old = Buffer.alloc(8192, 7);
  const slab = Buffer.alloc(dataBeforeImageBytes(old.length) + 10, 0xee);
  const image = slab.subarray(5, 5 + dataBeforeImageBytes(old.length));
  old.copy(dataBeforeImageInto(image, 3 * 4096));
  t.same(image, encodeBeforeImage({ offset: 3 * 4096, zero: false, data: old }));
  t.same(decodeBeforeImage(image), { offset: 3 * 4096, zero: false, data: old });
  t.equal(slab[4], 0xee, 'nothing written before the image');
  t.equal(slab[5 + image.length], 0xee, 'nothing written after it');
});

t.test('one slab is kept (the largest), in whole units, and let go when idle', async (t) => {
  const slabs = new Slabs(50);
  t.equal(slabs.acquire(0).length, 0, 'nothing to read: no slab');
  const a = slabs.acquire(1000);
  t.equal(a.length, 4 * 1024 * 1024, 'a whole unit');
  slabs.release(a);
  t.equal(slabs.acquire(4 * 1024 * 1024 - 7), a, 'a batch a little larger reuses it');
  const b = slabs.acquire(5 * 1024 * 1024);
  t.equal(b.length, 8 * 1024 * 1024, 'another at once: one of its own');
  slabs.release(a);
  slabs.release(b);
  t.equal(slabs.kept, 1, 'one kept');
  t.equal(slabs.acquire(6 * 1024 * 1024), b, 'the largest');
  slabs.release(b);
  await new Promise((resolve) => setTimeout(resolve, 120));
  t.equal(slabs.kept, 0, 'let go after the idle time');
});
