// A small moving line chart on a canvas: a fixed number of points per series, null breaks a line.

export const COLOURS = ["#0b57d0", "#b3261e", "#146c2e"];

export class LineChart {
  constructor(canvas, seriesCount, points = 120) {
    this.canvas = canvas;
    this.points = points;
    this.series = Array.from({ length: seriesCount }, () => []);
  }

  push(values) {
    values.forEach((value, i) => {
      const data = this.series[i];
      data.push(value === null || value === undefined || Number.isNaN(value) ? null : value);
      if (data.length > this.points) data.shift();
    });
    this.draw();
  }

  draw() {
    const canvas = this.canvas;
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth;
    const height = canvas.clientHeight;
    if (width === 0 || height === 0) return;
    if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
      canvas.width = Math.round(width * ratio);
      canvas.height = Math.round(height * ratio);
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);
    let max = 0;
    for (const data of this.series) for (const v of data) if (v !== null && v > max) max = v;
    const top = max > 0 ? max * 1.15 : 1;
    ctx.strokeStyle = "#d0d7de";
    ctx.lineWidth = 1;
    ctx.beginPath();
    ctx.moveTo(0, height - 0.5);
    ctx.lineTo(width, height - 0.5);
    ctx.stroke();
    const step = width / (this.points - 1);
    this.series.forEach((data, i) => {
      ctx.strokeStyle = COLOURS[i % COLOURS.length];
      ctx.lineWidth = 1.75;
      ctx.beginPath();
      let drawing = false;
      const offset = this.points - data.length;
      data.forEach((v, j) => {
        if (v === null) {
          drawing = false;
          return;
        }
        const x = (offset + j) * step;
        const y = height - 2 - (v / top) * (height - 6);
        if (drawing) ctx.lineTo(x, y);
        else ctx.moveTo(x, y);
        drawing = true;
      });
      ctx.stroke();
    });
  }
}
