// Re-render the HTML report and the goodput chart of a results file, and the targets stored in it (after
// changing the report or target code).
//   tsx bench/render.ts [bench/results/latest.json]
import { readFileSync, writeFileSync } from 'node:fs'
import { basename, dirname, join } from 'node:path'
import { goodputChart, renderHtml } from './html.js'
import type { BenchResults } from './results.js'
import { checkTargets } from './targets.js'

const file = process.argv[2] ?? new URL('./results/latest.json', import.meta.url).pathname
const results = JSON.parse(readFileSync(file, 'utf8')) as BenchResults
const targets = checkTargets(results)
writeFileSync(file, JSON.stringify({ ...results, targets }, null, 1))
writeFileSync(file.replace(/\.json$/, '.html'), renderHtml(results, targets))
// goodput.svg is the last complete full run's (the README shows it): only latest.json redraws it, not a
// run kept under its date or commit.
const chart = basename(file) === 'latest.json' && Object.keys(results.sweep.results).length > 0
if (chart) writeFileSync(join(dirname(file), 'goodput.svg'), goodputChart(results))
console.log(`rendered ${file.replace(/\.json$/, '.html')}${chart ? ' and goodput.svg' : ''}`)
