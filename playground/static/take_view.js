// The output column for one take: status, progress from `generation: N/M steps`, logs, the API's error
// beside the input it names, then the player, waveform, spectrogram, download, seed and the code.
import { drawSpectrogram, drawWaveform } from "./audio_view.js";

const $ = (id) => document.getElementById(id);
const SAY = {
  waiting: "Waiting for a free slot on the server…",
  starting: "Accepted by the server; starting…",
  processing: "Generating…",
  succeeded: "Done.",
  failed: "Failed.",
  canceled: "Cancelled.",
};

export class TakeView {
  constructor() {
    this.drawn = null;
    this.audio = null;
  }

  show(take, form) {
    const done = ["succeeded", "failed", "canceled"].includes(take.status);
    const saving = take.status === "succeeded" && !take.file_url;
    $("take-status").textContent = saving ? "Done; fetching the file…" : SAY[take.status] || take.status;
    $("take-status").dataset.status = take.status;
    $("take-status").dataset.take = take.id;
    $("cancel").hidden = done;
    this.progress(take);
    $("logs").textContent = take.logs;
    $("logs").scrollTop = $("logs").scrollHeight;
    this.note("take-notice", take.notice);
    const others = form ? form.showErrors(take.field_errors || {}) : take.field_errors;
    const named = Object.keys(take.field_errors || {}).filter((name) => !(name in others));
    const where = named.length ? `\n(see ${named.join(", ")} on the left)` : "";
    this.note("take-error", take.error && take.error + where);
    if (take.file_url && this.drawn !== take.id) this.result(take);
    if (!take.file_url) {
      $("result").hidden = true;
      this.drawn = null;
    }
  }

  progress(take) {
    const bar = $("progress");
    const text = $("progress-text");
    if (take.progress) {
      bar.value = take.progress.done / take.progress.total;
      text.textContent = `${take.progress.done}/${take.progress.total} decoding steps`;
    } else if (take.status === "processing" || take.status === "starting") {
      bar.removeAttribute("value"); // indeterminate until the first `generation:` line
      text.textContent = "";
    } else {
      bar.value = take.status === "succeeded" ? 1 : 0;
      text.textContent = "";
    }
    if (take.status === "succeeded") bar.value = 1;
  }

  note(id, text) {
    $(id).textContent = text || "";
    $(id).hidden = !text;
  }

  problem(message) {
    this.note("take-error", message);
  }

  async result(take) {
    this.drawn = take.id;
    $("result").hidden = false;
    $("result").dataset.take = take.id;
    const player = $("player");
    player.removeAttribute("data-decoded-duration");
    player.src = take.file_url;
    $("seed").textContent = take.seed;
    $("download").href = take.file_url;
    $("download").download = take.file_name;
    $("download").textContent = `Download ${take.file_name}`;
    $("code-curl").textContent = take.code.curl;
    $("code-python").textContent = take.code.python;
    try {
      const bytes = await (await fetch(take.file_url)).arrayBuffer();
      this.audio ??= new AudioContext();
      const buffer = await this.audio.decodeAudioData(bytes);
      if (this.drawn !== take.id) return;
      drawWaveform($("waveform"), buffer);
      drawSpectrogram($("spectrogram"), buffer);
      player.dataset.decodedDuration = buffer.duration;
    } catch (error) {
      this.problem(`The file arrived, but this browser could not decode it to draw it (${error.message}).`);
    }
  }
}
