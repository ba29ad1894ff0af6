// Tiny inline-SVG line charts for the HTML report (no external JS/CSS).

export interface LineSeries {
  name: string
  color: string
  points: Array<[number, number | null]>
  dash?: string
  /** draw a dot on every point */
  markers?: boolean
  width?: number
  /** plot against the right-hand axis */
  right?: boolean
}

export interface RefLine {
  /** horizontal line at y (left axis) */
  y?: number
  /** vertical line at x */
  x?: number
  label: string
  color?: string
  /** put the label under the line (to keep two close lines readable) */
  below?: boolean
}

export interface Band { x0: number, x1: number, label?: string, color?: string }

export interface ChartSpec {
  title: string
  xLabel: string
  yLabel: string
  yRightLabel?: string
  width?: number
  height?: number
  xLog?: boolean
  yLog?: boolean
  xMin?: number
  xMax?: number
  yMin?: number
  yMax?: number
  yRightMax?: number
  xTicks?: number[]
  xTickFormat?: (x: number) => string
  yTickFormat?: (y: number) => string
  series: LineSeries[]
  refs?: RefLine[]
  bands?: Band[]
  /** target markers: hollow diamonds with a label */
  targets?: Array<{ x: number, y: number, label: string }>
}

export const palette: Record<string, string> = {
  admission: '#1b7f3b',
  'under-pressure': '#d9730d',
  'static-cap': '#6a51a3',
  bare: '#c0392b'
}

export function esc (s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;')
}

function niceStep (span: number, count: number): number {
  const raw = span / Math.max(1, count)
  const mag = 10 ** Math.floor(Math.log10(raw))
  const f = raw / mag
  return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 2.5 ? 2.5 : f <= 5 ? 5 : 10) * mag
}

function linearTicks (min: number, max: number, count = 5): number[] {
  const step = niceStep(max - min, count)
  const out: number[] = []
  for (let v = Math.ceil(min / step) * step; v <= max + step * 1e-9; v += step) out.push(Math.round(v / step) * step)
  return out
}

function logTicks (min: number, max: number): number[] {
  const out: number[] = []
  for (let e = Math.floor(Math.log10(min)); e <= Math.ceil(Math.log10(max)); e++) {
    for (const m of [1, 2, 5]) {
      const v = m * 10 ** e
      if (v >= min * 0.999 && v <= max * 1.001) out.push(v)
    }
  }
  return out
}

export function defaultFormat (v: number): string {
  const a = Math.abs(v)
  if (a >= 10000) return `${Math.round(v / 1000)}k`
  if (a >= 1000) return `${(v / 1000).toFixed(1).replace(/\.0$/, '')}k`
  if (a >= 10 || v === 0) return String(Math.round(v))
  if (a >= 1) return v.toFixed(1).replace(/\.0$/, '')
  return String(Number(v.toPrecision(2)))
}

export function lineChart (c: ChartSpec): string {
  const W = c.width ?? 560
  const H = c.height ?? 300
  const hasRight = c.series.some(s => s.right === true)
  const m = { l: 62, r: hasRight ? 62 : 18, t: 30, b: 46 }
  const pw = W - m.l - m.r
  // legend: items flow left to right and wrap (≈ 6.3 px per character at 11 px)
  const legend: Array<{ s: LineSeries, x: number, row: number }> = []
  {
    let x = 0
    let row = 0
    for (const s of c.series) {
      const label = s.name + (s.right === true ? ' (right axis)' : '')
      const w = 25 + label.length * 6.3 + 16
      if (x > 0 && x + w > pw) { x = 0; row++ }
      legend.push({ s, x, row })
      x += w
    }
  }
  const legendRows = legend.length > 0 ? (legend[legend.length - 1] as { row: number }).row + 1 : 0
  const legendH = legendRows * 16 + 4
  const ph = H - m.t - m.b - legendH

  const xs: number[] = []
  const ysL: number[] = []
  const ysR: number[] = []
  for (const s of c.series) {
    for (const [x, y] of s.points) {
      xs.push(x)
      if (y !== null && Number.isFinite(y)) (s.right === true ? ysR : ysL).push(y)
    }
  }
  for (const r of c.refs ?? []) { if (r.y !== undefined) ysL.push(r.y) }
  for (const t of c.targets ?? []) ysL.push(t.y)
  const xMin = c.xMin ?? (xs.length > 0 ? Math.min(...xs) : 0)
  const xMax = c.xMax ?? (xs.length > 0 ? Math.max(...xs) : 1)
  let yMin = c.yMin ?? (c.yLog === true ? Math.max(1e-3, Math.min(...ysL.filter(y => y > 0))) : 0)
  if (!Number.isFinite(yMin)) yMin = c.yLog === true ? 1 : 0
  let yMax = c.yMax ?? (ysL.length > 0 ? Math.max(...ysL) * 1.08 : 1)
  if (!(yMax > yMin)) yMax = yMin + 1
  if (c.yLog === true) {
    yMin = 10 ** Math.floor(Math.log10(yMin))
    yMax = 10 ** Math.ceil(Math.log10(yMax))
  }
  const yRMax = c.yRightMax ?? (ysR.length > 0 ? Math.max(...ysR) * 1.08 || 1 : 1)

  const sx = (x: number): number => c.xLog === true
    ? m.l + ((Math.log(x) - Math.log(xMin)) / (Math.log(xMax) - Math.log(xMin))) * pw
    : m.l + ((x - xMin) / (xMax - xMin || 1)) * pw
  const syL = (y: number): number => {
    const v = c.yLog === true
      ? (Math.log(Math.max(y, yMin)) - Math.log(yMin)) / (Math.log(yMax) - Math.log(yMin))
      : (y - yMin) / (yMax - yMin)
    return m.t + ph - Math.min(1.02, Math.max(-0.02, v)) * ph
  }
  const syR = (y: number): number => m.t + ph - Math.min(1.02, Math.max(-0.02, y / yRMax)) * ph
  const fx = c.xTickFormat ?? defaultFormat
  const fy = c.yTickFormat ?? defaultFormat

  const parts: string[] = []
  parts.push(`<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 ${W} ${H}" width="${W}" height="${H}" role="img" aria-label="${esc(c.title)}" font-family="system-ui, sans-serif" font-size="11">`)
  parts.push(`<text x="${W / 2}" y="16" text-anchor="middle" font-size="13" font-weight="600">${esc(c.title)}</text>`)
  // bands
  for (const b of c.bands ?? []) {
    const x0 = sx(Math.max(b.x0, xMin))
    const x1 = sx(Math.min(b.x1, xMax))
    parts.push(`<rect x="${x0.toFixed(1)}" y="${m.t}" width="${Math.max(1, x1 - x0).toFixed(1)}" height="${ph}" fill="${b.color ?? '#f3e6c8'}" opacity="0.55"/>`)
    if (b.label !== undefined) parts.push(`<text x="${((x0 + x1) / 2).toFixed(1)}" y="${m.t + ph - 5}" text-anchor="middle" fill="#7a6a40" font-size="10">${esc(b.label)}</text>`)
  }
  // grid + axes
  const yt = c.yLog === true ? logTicks(yMin, yMax) : linearTicks(yMin, yMax)
  for (const v of yt) {
    const y = syL(v)
    parts.push(`<line x1="${m.l}" x2="${m.l + pw}" y1="${y.toFixed(1)}" y2="${y.toFixed(1)}" stroke="#e5e5e5"/>`)
    parts.push(`<text x="${m.l - 6}" y="${(y + 4).toFixed(1)}" text-anchor="end" fill="#444">${esc(fy(v))}</text>`)
  }
  if (hasRight) {
    for (const v of linearTicks(0, yRMax, 4)) {
      const y = syR(v)
      parts.push(`<text x="${m.l + pw + 6}" y="${(y + 4).toFixed(1)}" text-anchor="start" fill="#444">${esc(defaultFormat(v))}</text>`)
    }
  }
  const xt = c.xTicks ?? (c.xLog === true ? logTicks(xMin, xMax) : linearTicks(xMin, xMax, 8))
  for (const v of xt) {
    const x = sx(v)
    parts.push(`<line x1="${x.toFixed(1)}" x2="${x.toFixed(1)}" y1="${m.t}" y2="${m.t + ph}" stroke="#f0f0f0"/>`)
    parts.push(`<text x="${x.toFixed(1)}" y="${m.t + ph + 14}" text-anchor="middle" fill="#444">${esc(fx(v))}</text>`)
  }
  parts.push(`<rect x="${m.l}" y="${m.t}" width="${pw}" height="${ph}" fill="none" stroke="#999"/>`)
  parts.push(`<text x="${m.l + pw / 2}" y="${m.t + ph + 32}" text-anchor="middle" fill="#222">${esc(c.xLabel)}</text>`)
  parts.push(`<text transform="translate(14 ${m.t + ph / 2}) rotate(-90)" text-anchor="middle" fill="#222">${esc(c.yLabel)}</text>`)
  if (hasRight && c.yRightLabel !== undefined) {
    parts.push(`<text transform="translate(${W - 10} ${m.t + ph / 2}) rotate(90)" text-anchor="middle" fill="#222">${esc(c.yRightLabel)}</text>`)
  }
  // reference lines
  for (const r of c.refs ?? []) {
    const color = r.color ?? '#555'
    if (r.y !== undefined) {
      const y = syL(r.y)
      parts.push(`<line x1="${m.l}" x2="${m.l + pw}" y1="${y.toFixed(1)}" y2="${y.toFixed(1)}" stroke="${color}" stroke-dasharray="5 4" stroke-width="1.2"/>`)
      parts.push(`<text x="${m.l + pw - 4}" y="${(r.below === true ? y + 12 : y - 4).toFixed(1)}" text-anchor="end" fill="${color}" font-size="10">${esc(r.label)}</text>`)
    }
    if (r.x !== undefined) {
      const x = sx(r.x)
      parts.push(`<line x1="${x.toFixed(1)}" x2="${x.toFixed(1)}" y1="${m.t}" y2="${m.t + ph}" stroke="${color}" stroke-dasharray="3 3"/>`)
      parts.push(`<text x="${(x + 3).toFixed(1)}" y="${m.t + ph - 4}" fill="${color}" font-size="10">${esc(r.label)}</text>`)
    }
  }
  // series
  for (const s of c.series) {
    const sy = s.right === true ? syR : syL
    let d = ''
    let pen = false
    for (const [x, y] of s.points) {
      if (y === null || !Number.isFinite(y) || (c.yLog === true && s.right !== true && y <= 0)) { pen = false; continue }
      d += `${pen ? 'L' : 'M'}${sx(x).toFixed(1)} ${sy(y).toFixed(1)}`
      pen = true
    }
    if (d.length > 0) {
      parts.push(`<path d="${d}" fill="none" stroke="${s.color}" stroke-width="${s.width ?? 1.8}"${s.dash !== undefined ? ` stroke-dasharray="${s.dash}"` : ''} stroke-linejoin="round"/>`)
    }
    if (s.markers === true) {
      for (const [x, y] of s.points) {
        if (y === null || !Number.isFinite(y) || (c.yLog === true && y <= 0)) continue
        parts.push(`<circle cx="${sx(x).toFixed(1)}" cy="${sy(y).toFixed(1)}" r="3" fill="${s.color}"><title>${esc(`${s.name}: ${fx(x)} → ${fy(y)}`)}</title></circle>`)
      }
    }
  }
  // targets
  for (const t of c.targets ?? []) {
    const x = sx(t.x)
    const y = syL(t.y)
    parts.push(`<path d="M${x.toFixed(1)} ${(y - 6).toFixed(1)}L${(x + 6).toFixed(1)} ${y.toFixed(1)}L${x.toFixed(1)} ${(y + 6).toFixed(1)}L${(x - 6).toFixed(1)} ${y.toFixed(1)}Z" fill="none" stroke="#000" stroke-width="1.3"><title>${esc(t.label)}</title></path>`)
    const leftSide = x > m.l + pw - 60
    parts.push(`<text x="${(leftSide ? x - 8 : x + 8).toFixed(1)}" y="${(y + 14).toFixed(1)}" font-size="10" fill="#000"${leftSide ? ' text-anchor="end"' : ''}>${esc(t.label)}</text>`)
  }
  // legend
  const ly = H - legendH + 6
  legend.forEach(({ s, x: lx, row }) => {
    const x = Math.round(m.l + lx)
    const y = ly + row * 16
    parts.push(`<line x1="${x}" x2="${x + 20}" y1="${y}" y2="${y}" stroke="${s.color}" stroke-width="2.5"${s.dash !== undefined ? ` stroke-dasharray="${s.dash}"` : ''}/>`)
    parts.push(`<text x="${x + 25}" y="${y + 4}" fill="#222">${esc(s.name)}${s.right === true ? ' (right axis)' : ''}</text>`)
  })
  parts.push('</svg>')
  return parts.join('')
}
