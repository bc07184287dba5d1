// The classifier's page: sends the chosen or dropped photo to /predict and shows the top
// five classes. No framework and no request beyond this service.
"use strict";

const $ = (id) => document.getElementById(id);

function say(text, error) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
}

function show(answer, file) {
  const list = $("predictions");
  list.replaceChildren();
  for (const p of answer.predictions) {
    const pct = (p.score * 100).toFixed(1);
    const item = document.createElement("li");
    const row = document.createElement("div");
    row.className = "row";
    const label = document.createElement("span");
    label.className = "label";
    label.textContent = p.label;
    const value = document.createElement("span");
    value.textContent = pct + "%";
    row.append(label, value);
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.setAttribute("role", "img");
    bar.setAttribute("aria-label", p.label + ": " + pct + "%");
    const fill = document.createElement("span");
    fill.style.width = pct + "%";
    bar.append(fill);
    item.append(row, bar);
    list.append(item);
  }
  $("preview").src = URL.createObjectURL(file);
  $("meta").textContent = "Inference took " + answer.inference_ms.toFixed(1) + " ms with " +
    answer.model + " (" + answer.image.width + "×" + answer.image.height + " pixels).";
  $("result").hidden = false;
  say("");
}

async function classify(file) {
  if (!file) return;
  say("Classifying " + file.name + "…");
  const form = new FormData();
  form.append("file", file);
  try {
    const response = await fetch("/predict?top_k=5", { method: "POST", body: form });
    const answer = await response.json();
    if (!response.ok) {
      say(answer.message || answer.error || "The service refused the photo.", true);
      return;
    }
    show(answer, file);
  } catch (e) {
    say("The service did not answer: " + e.message, true);
  }
}

window.addEventListener("DOMContentLoaded", () => {
  const drop = $("drop");
  $("file").addEventListener("change", (e) => classify(e.target.files[0]));
  for (const name of ["dragenter", "dragover"]) {
    drop.addEventListener(name, (e) => { e.preventDefault(); drop.classList.add("over"); });
  }
  for (const name of ["dragleave", "drop"]) {
    drop.addEventListener(name, () => drop.classList.remove("over"));
  }
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    classify(e.dataTransfer.files[0]);
  });
  fetch("/", { headers: { Accept: "application/json" } })
    .then((r) => r.json())
    .then((about) => { $("model").textContent = "model: " + about.model.name + ", version " + about.version; })
    .catch(() => { $("model").textContent = ""; });
});
