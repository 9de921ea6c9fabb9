// A take's waveform and spectrogram, drawn from the decoded file: min/max per pixel column, and a
// 512-point FFT per column (a few milliseconds even for 300 s, so no server work is needed).

const FFT_SIZE = 512;

function mono(buffer) {
  const out = new Float32Array(buffer.length);
  for (let c = 0; c < buffer.numberOfChannels; c++) {
    const data = buffer.getChannelData(c);
    for (let i = 0; i < data.length; i++) out[i] += data[i] / buffer.numberOfChannels;
  }
  return out;
}

export function drawWaveform(canvas, buffer) {
  const context = canvas.getContext("2d");
  const samples = mono(buffer);
  const { width, height } = canvas;
  const perColumn = Math.max(1, Math.floor(samples.length / width));
  const peak = samples.reduce((most, value) => Math.max(most, Math.abs(value)), 1e-9); // drawn to full height
  context.clearRect(0, 0, width, height);
  context.fillStyle = "#7dd3fc";
  for (let x = 0; x < width; x++) {
    let low = 1;
    let high = -1;
    for (let i = x * perColumn; i < Math.min(samples.length, (x + 1) * perColumn); i++) {
      low = Math.min(low, samples[i] / peak);
      high = Math.max(high, samples[i] / peak);
    }
    if (high < low) break;
    context.fillRect(x, ((1 - high) * height) / 2, 1, Math.max(1, ((high - low) * height) / 2));
  }
}

// In-place iterative radix-2 FFT; returns the magnitudes of the first half.
function magnitudes(frame) {
  const n = frame.length;
  const re = Float32Array.from(frame);
  const im = new Float32Array(n);
  for (let i = 1, j = 0; i < n; i++) {
    let bit = n >> 1;
    for (; j & bit; bit >>= 1) j ^= bit;
    j ^= bit;
    if (i < j) [re[i], re[j]] = [re[j], re[i]];
  }
  for (let size = 2; size <= n; size <<= 1) {
    const step = (-2 * Math.PI) / size;
    for (let start = 0; start < n; start += size) {
      for (let k = 0; k < size / 2; k++) {
        const [cos, sin] = [Math.cos(step * k), Math.sin(step * k)];
        const [a, b] = [start + k, start + k + size / 2];
        const tr = re[b] * cos - im[b] * sin;
        const ti = re[b] * sin + im[b] * cos;
        [re[b], im[b]] = [re[a] - tr, im[a] - ti];
        [re[a], im[a]] = [re[a] + tr, im[a] + ti];
      }
    }
  }
  return Array.from({ length: n / 2 }, (_, k) => Math.hypot(re[k], im[k]));
}

export function drawSpectrogram(canvas, buffer) {
  const context = canvas.getContext("2d");
  const samples = mono(buffer);
  const { width, height } = canvas;
  const image = context.createImageData(width, height);
  const hop = Math.max(1, Math.floor((samples.length - FFT_SIZE) / width));
  const window = Array.from({ length: FFT_SIZE }, (_, i) => 0.5 - 0.5 * Math.cos((2 * Math.PI * i) / FFT_SIZE));
  for (let x = 0; x < width && x * hop + FFT_SIZE <= samples.length; x++) {
    const frame = window.map((w, i) => w * samples[x * hop + i]);
    const bins = magnitudes(frame);
    for (let y = 0; y < height; y++) {
      const bin = Math.floor(((height - 1 - y) / height) * bins.length);
      const level = Math.max(0, Math.min(1, (20 * Math.log10(bins[bin] + 1e-6) + 60) / 70));
      const at = (y * width + x) * 4;
      [image.data[at], image.data[at + 1], image.data[at + 2], image.data[at + 3]] = [
        255 * Math.min(1, level * 1.6), 255 * level * level, 120 * (1 - level) + 60 * level, 255,
      ];
    }
  }
  context.putImageData(image, 0, 0);
}
