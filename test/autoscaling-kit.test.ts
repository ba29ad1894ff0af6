// The autoscaling kit under example/ (HPA, prometheus-adapter rules, KEDA ScaledObject, Grafana
// dashboard) checked against the plugin: every metric it names is one the plugin exports, every PromQL
// expression in it parses (promtool), and the dashboard is wired to its variables.
import t from 'tap'
import { spawnSync } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import Fastify from 'fastify'
import { Registry } from 'prom-client'
import admission from '../lib/index.js'

const promtool = spawnSync('promtool', ['--version']).status === 0
const skipPromtool = !promtool && process.env.CI === undefined ? 'promtool not installed (apt-get install prometheus); CI installs it' : false

const read = (path: string): string => readFileSync(new URL(`../example/${path}`, import.meta.url), 'utf8')
const files = {
  hpa: read('k8s/hpa.yaml'),
  adapter: read('k8s/prometheus-adapter-rules.yaml'),
  keda: read('k8s/keda-scaledobject.yaml'),
  dashboard: read('grafana/dashboard.json')
}

/**
 * Every value of `key` in a YAML text, for the simple YAML of the kit: a one-line scalar (plain,
 * 'single' or "double" quoted) or a block scalar (`|`, `>`). Not a YAML parser; enough to pull the
 * queries out without one.
 */
function yamlValues (text: string, key: string): string[] {
  const lines = text.split('\n')
  const values: string[] = []
  const keyLine = new RegExp(`^(\\s*(?:- )?)${key}:\\s*(.*?)\\s*$`)
  lines.forEach((line, i) => {
    const m = keyLine.exec(line)
    if (m === null) return
    const indent = m[1]!.length
    const raw = m[2]!
    if (/^[|>][+-]?$/.test(raw)) {
      const body: string[] = []
      for (const next of lines.slice(i + 1)) {
        if (next.trim() !== '' && next.search(/\S/) <= indent) break
        body.push(next.trim())
      }
      values.push(body.join(raw.startsWith('>') ? ' ' : '\n').trim())
    } else if (raw.startsWith("'")) {
      values.push(/^'((?:[^']|'')*)'/.exec(raw)![1]!.replaceAll("''", "'"))
    } else if (raw.startsWith('"')) {
      values.push(JSON.parse(/^"(?:[^"\\]|\\.)*"/.exec(raw)![0]) as string)
    } else {
      values.push(raw.replace(/\s+#.*$/, ''))
    }
  })
  return values
}

function one (text: string, key: string): string {
  const values = yamlValues(text, key)
  if (values.length !== 1) throw new Error(`expected one ${key}, found ${values.length}`)
  return values[0]!
}

interface Datasource { type?: string, uid?: string }
interface Target { expr?: string, refId?: string, datasource?: Datasource }
interface Panel {
  id: number
  title: string
  datasource?: Datasource
  targets?: Target[]
  fieldConfig?: { defaults?: { thresholds?: { steps?: Array<{ value: number | null }> }, custom?: { thresholdsStyle?: { mode?: string } } } }
}
interface Variable { name: string, type: string, query?: string | { query?: string } }
const dashboard = JSON.parse(files.dashboard) as { schemaVersion: number, panels: Panel[], templating: { list: Variable[] } }

/** The adapter's renaming, applied to the series it selects: the name the custom metrics API serves → the series. */
const seriesQuery = one(files.adapter, 'seriesQuery')
const adapterSeries = /^[a-zA-Z_:][a-zA-Z0-9_:]*/.exec(seriesQuery)![0]
const adapterName = adapterSeries.replace(new RegExp(one(files.adapter, 'matches')), one(files.adapter, 'as').replace(/\$\{(\d+)\}/g, '$$$1'))
const adapterRenames = new Map([[adapterName, adapterSeries]])

/** Grafana's variables as Prometheus sees them once Grafana has filled them in. */
const grafanaVariables: Record<string, string> = { __rate_interval: '1m', __interval: '1m', __range: '1h', job: 'api' }
function fillGrafanaVariables (expr: string): string {
  return expr.replace(/\$\{?(\w+)\}?/g, (_, name: string) => {
    const value = grafanaVariables[name]
    if (value === undefined) throw new Error(`no test value for the Grafana variable $${name} in ${expr}`)
    return value
  })
}

/** Every PromQL expression of the kit, by where it comes from, as Prometheus would receive it. */
function expressions (): Map<string, string> {
  const exprs = new Map<string, string>()
  for (const panel of dashboard.panels) {
    for (const target of panel.targets ?? []) exprs.set(`dashboard_panel_${panel.id}_${target.refId}`, fillGrafanaVariables(target.expr ?? ''))
  }
  for (const variable of dashboard.templating.list) {
    if (variable.type !== 'query') continue
    // label_values(<selector>, <label>) is Grafana's; the selector is PromQL.
    const query = typeof variable.query === 'string' ? variable.query : variable.query?.query ?? ''
    const selector = /^label_values\((.+),\s*\w+\)$/.exec(query)?.[1] ?? `not label_values(selector, label): ${query}`
    exprs.set(`dashboard_variable_${variable.name}`, fillGrafanaVariables(selector))
  }
  exprs.set('adapter_series_query', seriesQuery)
  // What prometheus-adapter sends for two pods of one namespace.
  exprs.set('adapter_metrics_query', one(files.adapter, 'metricsQuery')
    .replaceAll('<<.Series>>', adapterSeries)
    .replaceAll('<<.LabelMatchers>>', 'namespace="default",pod=~"api-7d9f-abcde|api-7d9f-fghij"')
    .replaceAll('<<.GroupBy>>', 'pod'))
  exprs.set('keda_query', one(files.keda, 'query'))
  return exprs
}

/** promtool check rules on the expressions as recording rules (JSON is YAML). */
function checkRules (exprs: Map<string, string>): { ran: boolean, status: number | null, output: string } {
  const dir = mkdtempSync(join(tmpdir(), 'autoscaling-kit-'))
  try {
    const file = join(dir, 'rules.yml')
    const rules = [...exprs].map(([source, expr]) => ({ record: `kit:${source}`, expr }))
    writeFileSync(file, JSON.stringify({ groups: [{ name: 'autoscaling-kit', rules }] }))
    const check = spawnSync('promtool', ['check', 'rules', file], { encoding: 'utf8' })
    return { ran: check.error === undefined, status: check.status, output: check.stdout + check.stderr }
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
}

/** The series names of a metrics exposition: a histogram family is its _bucket, _sum and _count. */
function seriesNames (exposition: string): Set<string> {
  const names = new Set<string>()
  for (const [, family, type] of exposition.matchAll(/^# TYPE (\S+) (\S+)$/gm)) {
    if (type === 'histogram') for (const suffix of ['_bucket', '_sum', '_count']) names.add(family! + suffix)
    else if (type === 'summary') for (const suffix of ['', '_sum', '_count']) names.add(family! + suffix)
    else names.add(family!)
  }
  return names
}

// Grafana's variable syntax, not a JavaScript template.
const datasourceVariable = '${datasource}' // eslint-disable-line no-template-curly-in-string
const metricName = /\bfastify_admission_[a-zA-Z0-9_:]+/g

t.test('every metric the kit names is one the plugin exports', async t => {
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(admission, { registry: new Registry() })
  app.get('/', async () => 'ok')
  await app.inject('/')
  await app.inject('/')
  const exported = seriesNames((await app.inject('/metrics')).body)
  t.ok(exported.has('fastify_admission_saturation_ratio'), 'the exposition was read')

  t.equal(adapterName, 'fastify_admission_saturation', 'the adapter serves the ratio under its name without _ratio')
  t.same([...files.hpa.matchAll(/metric:\s*\n\s*name:\s*(\S+)/g)].map(m => m[1]), [adapterName], 'the HPA asks for the name the adapter serves')

  const referenced = new Map<string, Set<string>>()
  for (const [file, text] of Object.entries(files)) {
    // The adapter's name exists only in the custom metrics API: in the HPA and the adapter's own file.
    const renames = file === 'hpa' || file === 'adapter' ? adapterRenames : new Map<string, string>()
    const names = new Set<string>()
    for (const [name] of text.matchAll(metricName)) names.add(renames.get(name) ?? name)
    referenced.set(file, names)
    for (const name of names) t.ok(exported.has(name), `${file}: ${name} is exported`)
  }

  // So that the check above cannot pass on a file that names nothing.
  const saturation = 'fastify_admission_saturation_ratio'
  for (const file of ['hpa', 'adapter', 'keda']) t.ok(referenced.get(file)!.has(saturation), `${file} scales on ${saturation}`)
  const onDashboard = referenced.get('dashboard')!
  for (const name of [
    'requests_total', 'capacity_requests_per_second', 'concurrency_limit', 'inflight_requests',
    'event_loop_utilization_ratio', 'event_loop_delay_seconds_bucket', 'event_loop_delay_p99_seconds',
    'saturation_ratio', 'retry_after_seconds', 'request_duration_seconds_bucket', 'shedding', 'draining'
  ].map(n => 'fastify_admission_' + n)) {
    t.ok(onDashboard.has(name), `the dashboard shows ${name}`)
  }
})

t.test('the HPA and the ScaledObject agree on target, window and behaviour', async t => {
  t.same(yamlValues(files.hpa, 'averageValue'), ['1'])
  t.same(yamlValues(files.keda, 'threshold'), ['1'])
  t.same(yamlValues(files.hpa, 'stabilizationWindowSeconds'), ['0', '300'], 'up at once, down after 5 minutes')
  t.same(yamlValues(files.keda, 'stabilizationWindowSeconds'), yamlValues(files.hpa, 'stabilizationWindowSeconds'))
  t.same(yamlValues(files.keda, 'value'), yamlValues(files.hpa, 'value'), 'same policies')
  t.same(yamlValues(files.keda, 'metricType'), [], 'AverageValue, the default: the query is a sum over pods')
  t.match(one(files.keda, 'query'), /^sum\(avg_over_time\(fastify_admission_saturation_ratio\{[^}]*\}\[30s\]\)\)$/)
  t.match(one(files.adapter, 'metricsQuery'), /avg_over_time\(<<\.Series>>\{<<\.LabelMatchers>>\}\[30s\]\)/, 'the adapter averages over the same 30 s')
})

t.test('the dashboard: datasource variable on every panel and query, a query in every target', async t => {
  t.ok(dashboard.schemaVersion >= 39)
  const variables = new Map(dashboard.templating.list.map(v => [v.name, v]))
  t.match(variables.get('datasource'), { type: 'datasource', query: 'prometheus' })
  t.match(variables.get('job'), { type: 'query', datasource: { uid: datasourceVariable }, query: { query: /fastify_admission_/ } })
  t.ok(dashboard.panels.length >= 8)
  t.equal(new Set(dashboard.panels.map(p => p.id)).size, dashboard.panels.length, 'panel ids are unique')
  for (const panel of dashboard.panels) {
    t.match(panel.datasource, { type: 'prometheus', uid: datasourceVariable }, `${panel.title}: datasource`)
    t.ok(panel.targets !== undefined && panel.targets.length > 0, `${panel.title}: has queries`)
    for (const target of panel.targets ?? []) {
      t.match(target.expr, /\S/, `${panel.title} ${target.refId}: expr`)
      t.match(target.datasource ?? panel.datasource, { uid: datasourceVariable }, `${panel.title} ${target.refId}: datasource`)
      for (const selector of (target.expr ?? '').matchAll(/fastify_admission_\w+(\{[^}]*\})?/g)) {
        t.match(selector[1], /job=~"\$job"/, `${panel.title} ${target.refId}: ${selector[0]} is filtered by $job`)
      }
      if (/\brate\(/.test(target.expr ?? '')) t.match(target.expr, /\[\$__rate_interval\]/, `${panel.title} ${target.refId}: rate over $__rate_interval`)
    }
  }
  const saturation = dashboard.panels.filter(p => p.targets?.some(q => q.expr?.includes('saturation_ratio')))
  t.equal(saturation.length, 1, 'one saturation panel')
  t.equal(saturation[0]?.fieldConfig?.defaults?.custom?.thresholdsStyle?.mode, 'line')
  t.ok(saturation[0]?.fieldConfig?.defaults?.thresholds?.steps?.some(s => s.value === 1), 'a threshold line at 1')
})

t.test('promtool check rules: every PromQL expression of the kit parses', { skip: skipPromtool }, async t => {
  const exprs = expressions()
  t.ok(exprs.size >= 20, `${exprs.size} expressions`)
  // No Grafana variable ($job) or adapter template (<<.Series>>) left for promtool to trip on, or to pass.
  for (const [source, expr] of exprs) t.notMatch(expr, /\$|<<|>>/, `${source}: every placeholder filled in`)
  t.throws(() => fillGrafanaVariables('rate(x[$__unknown])'), /\$__unknown/, 'an unknown Grafana variable is not passed through')
  const { ran, status, output } = checkRules(exprs)
  t.ok(ran, 'promtool ran')
  t.equal(status, 0, output)
  t.match(output, `SUCCESS: ${exprs.size} rules found`)
})

t.test('promtool check rules fails on one broken expression among them (the check is not vacuous)', { skip: skipPromtool }, async t => {
  const exprs = expressions()
  exprs.set('broken', 'sum(rate(fastify_admission_requests_total[1m])')
  const { ran, status, output } = checkRules(exprs)
  t.ok(ran, 'promtool ran')
  t.not(status, 0)
  t.match(output, /kit:broken/, output)
  t.notMatch(output, /SUCCESS/)
})
