// The session's takes, newest first: each with its inputs and the seed it used, playable, reusable in the form.

function summary(input) {
  const prompt = input.prompt ? `“${input.prompt.slice(0, 60)}”` : "(no prompt)";
  const rest = Object.entries(input)
    .filter(([name, value]) => !["prompt", "seed"].includes(name) && !(typeof value === "string" && value.startsWith("data:")))
    .map(([name, value]) => `${name}=${JSON.stringify(value)}`);
  return [prompt, ...rest].join(" · ");
}

export class History {
  constructor(list, { show, reuse }) {
    this.list = list;
    this.entries = new Map();
    this.show = show;
    this.reuse = reuse;
  }

  add(take, input, fileNames) {
    const item = document.createElement("li");
    item.dataset.take = take.id;
    const entry = { id: take.id, input, fileNames, item, take };
    item.innerHTML = `<span class="status"></span> <span class="inputs"></span> <span class="seed"></span>
      <audio controls preload="none" hidden></audio>
      <button type="button" class="show">Show</button> <button type="button" class="reuse">Reuse inputs</button>`;
    item.querySelector(".inputs").textContent = summary(input);
    const files = Object.fromEntries(Object.entries(fileNames).map(([name, file]) => [name, { name: file, dataUri: input[name] }]));
    entry.files = files;
    item.querySelector(".show").addEventListener("click", () => this.show(entry));
    item.querySelector(".reuse").addEventListener("click", () => this.reuse(entry));
    this.list.prepend(item);
    this.entries.set(take.id, entry);
    this.update(take);
    return entry;
  }

  update(take) {
    const entry = this.entries.get(take.id);
    if (!entry) return;
    entry.take = take;
    entry.item.querySelector(".status").textContent = take.status;
    entry.item.dataset.status = take.status;
    entry.item.querySelector(".seed").textContent = take.seed === null ? "" : `seed ${take.seed}`;
    const player = entry.item.querySelector("audio");
    if (take.file_url && player.hidden) {
      player.src = take.file_url;
      player.hidden = false;
    }
  }
}
