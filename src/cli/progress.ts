/** A progress bar for long-running commands, on stderr (stdout stays for the result). */
export function progressBar(label: string, width = 30) {
  const started = Date.now();
  return (done: number, total: number, note = '') => {
    const frac = total > 0 ? Math.min(1, done / total) : 1;
    const filled = Math.round(frac * width);
    const bar = '█'.repeat(filled) + '░'.repeat(width - filled);
    const secs = ((Date.now() - started) / 1000).toFixed(1);
    process.stderr.write(`\r${label} [${bar}] ${done}/${total} ${note.padEnd(12)} ${secs}s`);
    if (done >= total) process.stderr.write('\n');
  };
}
