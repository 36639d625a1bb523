// Sizes as people read them (binary units): "512 MiB", "1.5 GiB". Used by
// drctl and by the configuration server's job step messages.
const sizeUnits = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];

export function formatBytes(bytes: number): string {
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < sizeUnits.length - 1) {
    value /= 1024;
    unit++;
  }
  return unit === 0 ? `${value} B` : `${value >= 100 ? value.toFixed(0) : value.toFixed(1)} ${sizeUnits[unit]}`;
}
