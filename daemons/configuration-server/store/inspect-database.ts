// Checks that a file is a drplane configuration database, in a process of its
// own (backup.ts, inspectDatabaseApart): LMDB trusts the file it opens, and a
// damaged one may crash the process. Prints {"summary": ...} or {"error": ...}.
import { DrplaneError, ErrorCode } from '../../../shared/errors';
import { inspectDatabase } from './backup';

const [file, label] = process.argv.slice(2);
if (!file) {
  process.stderr.write('usage: inspect-database FILE [NAME-IN-MESSAGES]\n');
  process.exit(2);
}
inspectDatabase(file, label || file).then(
  (summary) => process.stdout.write(`${JSON.stringify({ summary })}\n`),
  (error: unknown) => {
    const code = error instanceof DrplaneError ? error.code : ErrorCode.Internal;
    process.stdout.write(`${JSON.stringify({ error: { code, message: error instanceof Error ? error.message : String(error) } })}\n`);
  },
);
