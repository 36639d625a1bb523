// Self-contained SVG charts written next to the JSON results: GB/s per case
// (run.ts) and RPO and backlog over time per rate (continuous.ts). Hand-written
// SVG, no dependency: axes, labels and a legend, nothing else.
import type { Row } from './report';

const font = 'font-family="system-ui, -apple-system, Segoe UI, Helvetica, Arial, sans-serif"';
const colors = { drplane: '#1f77b4', rsync: '#ff7f0e', cp: '#2ca02c', cpSync: '#9467bd', other: '#7f7f7f', axis: '#333333', grid: '#e3e3e3', muted: '#666666' };

function escapeXml(text: string): string {
  return text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
}

function text(x: number, y: number, content: string, attributes = ''): string {
  return `<text x="${x.toFixed(1)}" y="${y.toFixed(1)}" ${attributes}>${escapeXml(content)}</text>`;
}

/** A "nice" axis: 0 to a round maximum at or above `max`, in about `count` steps of 1, 2, 2.5 or 5 x 10^n. */
export function niceTicks(max: number, count = 5): number[] {
  if (!(max > 0) || !Number.isFinite(max)) return [0, 1];
  const rough = max / count;
  const magnitude = 10 ** Math.floor(Math.log10(rough));
  const step = [1, 2, 2.5, 5, 10].map((factor) => factor * magnitude).find((candidate) => candidate >= rough)!;
  const ticks: number[] = [];
  for (let tick = 0; tick < max + step * 1e-9; tick += step) ticks.push(Number(tick.toPrecision(12)));
  if (ticks[ticks.length - 1] < max) ticks.push(Number((ticks[ticks.length - 1] + step).toPrecision(12)));
  return ticks;
}

function tickLabel(value: number): string {
  if (value === 0) return '0';
  if (Math.abs(value) >= 100) return value.toFixed(0);
  return String(Number(value.toPrecision(3)));
}

function legend(x: number, y: number, entries: { label: string; color: string; line?: boolean }[]): string {
  const parts: string[] = [];
  let left = x;
  for (const entry of entries) {
    parts.push(
      entry.line
        ? `<line x1="${left}" y1="${y - 4}" x2="${left + 18}" y2="${y - 4}" stroke="${entry.color}" stroke-width="2.5"/>`
        : `<rect x="${left}" y="${y - 10}" width="12" height="12" fill="${entry.color}"/>`,
    );
    parts.push(text(left + (entry.line ? 24 : 17), y, entry.label, `${font} font-size="12" fill="${colors.axis}"`));
    left += (entry.line ? 30 : 22) + entry.label.length * 6.8 + 14;
  }
  return parts.join('\n');
}

function svgDocument(width: number, height: number, body: string[]): string {
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}">`,
    `<rect width="${width}" height="${height}" fill="#ffffff"/>`,
    ...body,
    '</svg>',
    '',
  ].join('\n');
}

function sideColor(side: string): string {
  if (side === 'drplane') return colors.drplane;
  if (side.startsWith('rsync')) return colors.rsync;
  if (side === 'cp') return colors.cp;
  if (side === 'cp + sync') return colors.cpSync;
  return colors.other;
}

/**
 * Horizontal bars of GB/s per case: drplane and each peer. Each case has its
 * own scale (a delta's GB/s can be ten times a full sync's); the ratios that
 * matter are within a case.
 */
export function throughputChart(rows: Row[], subtitle: string, descriptions: Record<string, string> = {}): string {
  const cases = [...new Set(rows.map((row) => row.case))].map((name) => {
    const caseRows = rows.filter((row) => row.case === name);
    const errorOf = (side: string) => caseRows.flatMap((row) => row.errors).find((error) => error.startsWith(`${side}: `));
    const bars: { side: string; value?: number; error?: string }[] = [];
    if (caseRows.some((row) => row.drplaneGigabytesPerSecond !== undefined || errorOf('drplane'))) {
      bars.push({ side: 'drplane', value: caseRows[0].drplaneGigabytesPerSecond, error: errorOf('drplane') });
    }
    for (const row of caseRows) if (row.peer !== '(none run)') bars.push({ side: row.peer, value: row.peerGigabytesPerSecond, error: errorOf(row.peer) });
    return { name, bars };
  });

  const width = 900;
  const labelWidth = 190;
  const plotLeft = labelWidth + 10;
  const plotRight = width - 80;
  const barHeight = 18;
  const barGap = 6;
  const body: string[] = [];
  body.push(text(20, 28, 'drplane benchmark: GB/s per case (disk bytes / wall-clock second; higher is better)', `${font} font-size="16" font-weight="600" fill="${colors.axis}"`));
  body.push(text(20, 48, `${subtitle}; each case has its own scale`, `${font} font-size="12" fill="${colors.muted}"`));
  const sides = [...new Set(cases.flatMap((entry) => entry.bars.map((bar) => bar.side)))];
  const legendEntries = [
    ...(sides.includes('drplane') ? [{ label: 'drplane', color: colors.drplane }] : []),
    ...(sides.some((side) => side.startsWith('rsync')) ? [{ label: 'rsync', color: colors.rsync }] : []),
    ...(sides.includes('cp') ? [{ label: 'cp', color: colors.cp }] : []),
    ...(sides.includes('cp + sync') ? [{ label: 'cp + sync', color: colors.cpSync }] : []),
  ];
  body.push(legend(20, 72, legendEntries));

  let y = 96;
  for (const entry of cases) {
    body.push(
      `<text x="20" y="${(y + 12).toFixed(1)}" ${font} font-size="14" fill="${colors.axis}"><tspan font-weight="600">${escapeXml(entry.name)}</tspan>` +
        (descriptions[entry.name] ? `<tspan dx="10" fill="${colors.muted}" font-size="12">${escapeXml(descriptions[entry.name])}</tspan>` : '') +
        '</text>',
    );
    y += 22;
    const ticks = niceTicks(Math.max(0, ...entry.bars.map((bar) => bar.value ?? 0)));
    const scaleMax = ticks[ticks.length - 1];
    const x = (value: number) => plotLeft + (value / scaleMax) * (plotRight - plotLeft);
    const panelTop = y;
    const panelBottom = y + entry.bars.length * (barHeight + barGap);
    for (const tick of ticks) body.push(`<line x1="${x(tick).toFixed(1)}" y1="${panelTop - 2}" x2="${x(tick).toFixed(1)}" y2="${panelBottom}" stroke="${colors.grid}"/>`);
    for (const bar of entry.bars) {
      body.push(text(plotLeft - 8, y + barHeight - 4, bar.side, `${font} font-size="12" text-anchor="end" fill="${colors.axis}"`));
      if (bar.value !== undefined && Number.isFinite(bar.value)) {
        body.push(`<rect x="${plotLeft}" y="${y}" width="${Math.max(1, x(bar.value) - plotLeft).toFixed(1)}" height="${barHeight}" fill="${sideColor(bar.side)}"><title>${escapeXml(`${entry.name} / ${bar.side}: ${bar.value.toFixed(3)} GB/s`)}</title></rect>`);
        body.push(text(x(bar.value) + 5, y + barHeight - 4, bar.value.toFixed(2), `${font} font-size="12" fill="${colors.axis}"`));
      } else {
        body.push(text(plotLeft + 5, y + barHeight - 4, bar.error ? 'error (see the JSON)' : 'not run', `${font} font-size="12" fill="#c00000"`));
      }
      y += barHeight + barGap;
    }
    body.push(`<line x1="${plotLeft}" y1="${panelTop - 2}" x2="${plotLeft}" y2="${panelBottom}" stroke="${colors.axis}"/>`);
    body.push(`<line x1="${plotLeft}" y1="${panelBottom}" x2="${plotRight}" y2="${panelBottom}" stroke="${colors.axis}"/>`);
    for (const tick of ticks) {
      body.push(`<line x1="${x(tick).toFixed(1)}" y1="${panelBottom}" x2="${x(tick).toFixed(1)}" y2="${panelBottom + 4}" stroke="${colors.axis}"/>`);
      body.push(text(x(tick), panelBottom + 16, tickLabel(tick), `${font} font-size="11" text-anchor="middle" fill="${colors.axis}"`));
    }
    body.push(text(plotRight + 26, panelBottom + 16, 'GB/s', `${font} font-size="11" fill="${colors.axis}"`));
    y = panelBottom + 34;
  }
  return svgDocument(width, y, body);
}

/** One sample of the continuous benchmark's time series. */
export interface SeriesPoint {
  /** Since the workload of the rate started. */
  tMs: number;
  /** Undefined while no point exists yet. */
  rpoMs?: number;
  backlogBytes?: number;
}

export interface RateSeries {
  rateMBps: number;
  /** When the workload stopped (the drain follows). */
  workloadEndMs?: number;
  drplane?: SeriesPoint[];
  /** The rsync loop: RPO only. */
  peer?: SeriesPoint[];
}

interface Line {
  label: string;
  color: string;
  points: { x: number; y?: number }[];
}

/** One line chart: `lines` over time, with axes, ticks and labels, in the box at (left, top). */
function lineChart(left: number, top: number, width: number, height: number, title: string, yLabel: string, lines: Line[], xMax: number, markerX?: number): string[] {
  const plotLeft = left + 56;
  const plotRight = left + width - 10;
  const plotTop = top + 26;
  const plotBottom = top + height - 40;
  const xTicks = niceTicks(xMax > 0 ? xMax : 1, 6);
  const yTicks = niceTicks(Math.max(0, ...lines.flatMap((line) => line.points.map((point) => point.y ?? 0))), 4);
  const xScale = (value: number) => plotLeft + (value / xTicks[xTicks.length - 1]) * (plotRight - plotLeft);
  const yScale = (value: number) => plotBottom - (value / yTicks[yTicks.length - 1]) * (plotBottom - plotTop);
  const out: string[] = [text(plotLeft, top + 14, title, `${font} font-size="13" font-weight="600" fill="${colors.axis}"`)];
  for (const tick of yTicks) {
    out.push(`<line x1="${plotLeft}" y1="${yScale(tick).toFixed(1)}" x2="${plotRight}" y2="${yScale(tick).toFixed(1)}" stroke="${colors.grid}"/>`);
    out.push(text(plotLeft - 6, yScale(tick) + 4, tickLabel(tick), `${font} font-size="11" text-anchor="end" fill="${colors.axis}"`));
  }
  for (const tick of xTicks) {
    out.push(`<line x1="${xScale(tick).toFixed(1)}" y1="${plotBottom}" x2="${xScale(tick).toFixed(1)}" y2="${plotBottom + 4}" stroke="${colors.axis}"/>`);
    out.push(text(xScale(tick), plotBottom + 16, tickLabel(tick), `${font} font-size="11" text-anchor="middle" fill="${colors.axis}"`));
  }
  out.push(`<line x1="${plotLeft}" y1="${plotTop}" x2="${plotLeft}" y2="${plotBottom}" stroke="${colors.axis}"/>`);
  out.push(`<line x1="${plotLeft}" y1="${plotBottom}" x2="${plotRight}" y2="${plotBottom}" stroke="${colors.axis}"/>`);
  out.push(text((plotLeft + plotRight) / 2, plotBottom + 32, 'seconds since the workload started', `${font} font-size="11" text-anchor="middle" fill="${colors.muted}"`));
  const yMiddle = (plotTop + plotBottom) / 2;
  out.push(text(left + 14, yMiddle, yLabel, `${font} font-size="11" text-anchor="middle" fill="${colors.muted}" transform="rotate(-90 ${left + 14} ${yMiddle.toFixed(1)})"`));
  if (markerX !== undefined && markerX <= xTicks[xTicks.length - 1]) {
    out.push(`<line x1="${xScale(markerX).toFixed(1)}" y1="${plotTop}" x2="${xScale(markerX).toFixed(1)}" y2="${plotBottom}" stroke="${colors.muted}" stroke-dasharray="4 3"/>`);
    out.push(text(xScale(markerX) + 4, plotTop + 10, 'workload ends', `${font} font-size="10" fill="${colors.muted}"`));
  }
  for (const line of lines) {
    // A point without a value (no recovery point yet) breaks the line.
    let path = '';
    let pen = false;
    for (const point of line.points) {
      if (point.y === undefined || !Number.isFinite(point.y)) {
        pen = false;
        continue;
      }
      path += `${pen ? 'L' : 'M'}${xScale(point.x).toFixed(1)} ${yScale(point.y).toFixed(1)} `;
      pen = true;
    }
    if (path) out.push(`<path d="${path.trim()}" fill="none" stroke="${line.color}" stroke-width="2" stroke-linejoin="round"><title>${escapeXml(line.label)}</title></path>`);
  }
  if (lines.every((line) => line.points.every((point) => point.y === undefined))) {
    out.push(text((plotLeft + plotRight) / 2, yMiddle, 'no samples', `${font} font-size="12" text-anchor="middle" fill="${colors.muted}"`));
  }
  return out;
}

/** Per rate, two line charts side by side: RPO over time (drplane and the rsync loop) and drplane's backlog over time. */
export function continuousChart(rates: RateSeries[], subtitle: string): string {
  const width = 1000;
  const panelWidth = 480;
  const panelHeight = 230;
  const body: string[] = [];
  body.push(text(20, 28, 'drplane continuous replication: RPO and backlog over time, per write rate', `${font} font-size="16" font-weight="600" fill="${colors.axis}"`));
  body.push(text(20, 48, `${subtitle}; sampled every 250 ms`, `${font} font-size="12" fill="${colors.muted}"`));
  const hasPeer = rates.some((rate) => rate.peer?.length);
  body.push(
    legend(20, 72, [
      { label: 'drplane', color: colors.drplane, line: true },
      ...(hasPeer ? [{ label: 'rsync loop (RPO: time since the last finished pass began)', color: colors.rsync, line: true }] : []),
    ]),
  );
  let top = 88;
  for (const rate of rates) {
    const xMax = Math.max(1, ...[...(rate.drplane ?? []), ...(rate.peer ?? [])].map((point) => point.tMs / 1000));
    const markerX = rate.workloadEndMs === undefined ? undefined : rate.workloadEndMs / 1000;
    const rpoLines: Line[] = [];
    if (rate.drplane) rpoLines.push({ label: 'drplane RPO', color: colors.drplane, points: rate.drplane.map((point) => ({ x: point.tMs / 1000, y: point.rpoMs === undefined ? undefined : point.rpoMs / 1000 })) });
    if (rate.peer) rpoLines.push({ label: 'rsync loop RPO', color: colors.rsync, points: rate.peer.map((point) => ({ x: point.tMs / 1000, y: point.rpoMs === undefined ? undefined : point.rpoMs / 1000 })) });
    body.push(...lineChart(20, top, panelWidth, panelHeight, `${rate.rateMBps} MB/s: RPO`, 'RPO (s)', rpoLines, xMax, markerX));
    const backlogLines: Line[] = rate.drplane
      ? [{ label: 'drplane backlog', color: colors.drplane, points: rate.drplane.map((point) => ({ x: point.tMs / 1000, y: point.backlogBytes === undefined ? undefined : point.backlogBytes / 1e6 })) }]
      : [];
    body.push(...lineChart(20 + panelWidth + 10, top, panelWidth, panelHeight, `${rate.rateMBps} MB/s: drplane backlog`, 'backlog (MB)', backlogLines, xMax, markerX));
    top += panelHeight + 16;
  }
  return svgDocument(width, top, body);
}
