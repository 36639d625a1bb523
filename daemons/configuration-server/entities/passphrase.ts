// The passphrase that process servers, master targets and agents present to
// register. Configured, or generated on first start into <dataDir>/passphrase
// (mode 0600) and reused afterwards, like ASR's configuration server.
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { ConfigError, passphraseEnvironment } from '../../../shared/config';

/** Random bytes of a generated passphrase (base64url: 32 characters). */
export const generatedPassphraseBytes = 24;
/**
 * The shortest passphrase an operator may configure: about 120 bits when its
 * characters are random letters and digits (what `openssl rand -base64 15`
 * gives). The generated one has 32.
 */
export const passphraseLengthMin = 20;

export interface Passphrase {
  value: string;
  /** Where an operator finds it (a file), or how it was given. */
  source: string;
  generated: boolean;
}

export function loadOrCreatePassphrase(config: { passphrase?: string; passphraseFile?: string }, dataDir: string): Passphrase {
  if (config.passphraseFile) {
    let value: string;
    try {
      value = fs.readFileSync(config.passphraseFile, 'utf8').trim();
    } catch (error) {
      throw new ConfigError(`config key passphraseFile: cannot read ${config.passphraseFile}: ${(error as Error).message}`);
    }
    return { value: checkLength(value, 'passphraseFile'), source: path.resolve(config.passphraseFile), generated: false };
  }
  if (config.passphrase) return { value: checkLength(config.passphrase, 'passphrase'), source: 'the configured passphrase (config key passphrase)', generated: false };
  const fromEnvironment = process.env[passphraseEnvironment];
  if (fromEnvironment) return { value: checkLength(fromEnvironment, `passphrase (from $${passphraseEnvironment})`), source: `$${passphraseEnvironment}`, generated: false };

  const file = path.join(dataDir, 'passphrase');
  if (fs.existsSync(file)) {
    const value = fs.readFileSync(file, 'utf8').trim();
    if (value.length === 0) throw new ConfigError(`${file} is empty: delete it to generate a new passphrase (every registered server must then use the new one)`);
    return { value, source: file, generated: false };
  }
  const value = crypto.randomBytes(generatedPassphraseBytes).toString('base64url');
  // Written whole or not at all: a crash cannot leave a half passphrase behind.
  const temporary = `${file}.${process.pid}.tmp`;
  const fd = fs.openSync(temporary, 'w', 0o600);
  try {
    fs.writeSync(fd, `${value}\n`);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  fs.renameSync(temporary, file);
  return { value, source: file, generated: true };
}

function checkLength(value: string, key: string): string {
  if (value.length < passphraseLengthMin) throw new ConfigError(`config key ${key}: the passphrase must have at least ${passphraseLengthMin} characters (random ones: openssl rand -base64 15)`);
  return value;
}

/** Compares in constant time (on hashes, so the lengths do not leak either). */
export function secretsEqual(given: string, expected: string): boolean {
  const a = crypto.createHash('sha256').update(given).digest();
  const b = crypto.createHash('sha256').update(expected).digest();
  return crypto.timingSafeEqual(a, b);
}
