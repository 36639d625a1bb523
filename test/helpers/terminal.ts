// What a terminal of a given width shows of a program's output: a small
// emulation of the few controls a progress bar uses (carriage return, new
// line, cursor to a column, save and restore the cursor, erase in line), so a
// test can check that no character was written past the last column (the
// terminal would wrap it) and read each state of the line the bar redrew.
import { spawn } from 'node:child_process';
import { withoutTapHook } from './daemons';

export interface TerminalRender {
  /** The line's text each time the cursor went back to its start (a redraw) or on to the next line, in order. */
  frames: string[];
  /** Each text that reached past the last column. */
  overflows: string[];
}

// eslint-disable-next-line no-control-regex
const controlPattern = /\x1b\[([?0-9;]*)([A-Za-z])|\x1b([78])|\x1b[()][A-Za-z0-9]|([\r\n\b])/y;

export function renderTerminal(output: string, width: number): TerminalRender {
  const frames: string[] = [];
  const overflows: string[] = [];
  let line: string[] = [];
  let column = 0;
  let savedColumn = 0;
  const frame = () => {
    const text = line.join('').trimEnd();
    if (text) frames.push(text);
  };
  for (let at = 0; at < output.length; ) {
    controlPattern.lastIndex = at;
    const control = controlPattern.exec(output);
    if (control) {
      at = controlPattern.lastIndex;
      const [, parameters, command, escape, character] = control;
      if (character === '\r') {
        frame();
        column = 0;
      } else if (character === '\n') {
        frame();
        line = [];
        column = 0;
      } else if (character === '\b') column = Math.max(0, column - 1);
      else if (escape === '7') savedColumn = column;
      else if (escape === '8') {
        frame();
        column = savedColumn;
      } else if (command === 'G') {
        frame();
        column = Math.max(0, Number(parameters || '1') - 1);
      } else if (command === 'K') {
        if (!parameters || parameters === '0') line = line.slice(0, column);
        else if (parameters === '2') line = [];
        else line = line.map((cell, index) => (index <= column ? ' ' : cell));
      }
      // Other controls (cursor shown or hidden, line wrapping off, colours) move nothing.
      continue;
    }
    const character = output[at]!;
    at++;
    if (column >= width) overflows.push(`${line.join('')}${character}`);
    while (line.length < column) line.push(' ');
    line[column] = character;
    column++;
  }
  frame();
  return { frames, overflows };
}

/**
 * Runs a command under a pseudo-terminal of `columns` x 40 (script from
 * util-linux: stdout and stderr of the command are the terminal), and
 * resolves with everything the terminal received.
 */
export function runInTerminal(command: string[], columns: number): Promise<{ code: number | null; output: string }> {
  const quoted = withoutTapHook(command)
    .map((part) => `'${part.replace(/'/g, `'\\''`)}'`)
    .join(' ');
  return new Promise((resolve, reject) => {
    const child = spawn('script', ['-qfec', `stty cols ${columns} rows 40; exec ${quoted}`, '/dev/null'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    child.stdout.on('data', (chunk: Buffer) => (output += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (output += chunk.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, output }));
  });
}
