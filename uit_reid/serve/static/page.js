// The search page: reads q and k from the URL, asks /search, draws the grid, keeps the URL in step.
"use strict";
(function () {
  const form = document.getElementById("search");
  const qInput = document.getElementById("q");
  const kInput = document.getElementById("k");
  const status = document.getElementById("status");
  const grid = document.getElementById("results");

  function setStatus(text, isError) {
    status.textContent = text;
    status.classList.toggle("error", Boolean(isError));
  }

  // what a tile names: the file name of an image id that is a path, else the id itself
  function fileName(hit) {
    const id = String(hit.id);
    return id.split(/[\\/]/).pop() || id;
  }

  // the empty page says what it searches: the gallery's size and the model (its fingerprint)
  async function describeGallery() {
    try {
      const response = await fetch("/stats", { headers: { accept: "application/json" } });
      if (!response.ok) return;
      const stats = await response.json();
      if (qInput.value.trim()) return;  // a search started meanwhile: its status wins
      setStatus("Searching a gallery of " + stats.index_size + " images with the model " +
                (stats.model_fingerprint || "(not recorded)") + ".");
    } catch (err) { /* the status line stays empty */ }
  }

  function render(query, hits) {
    grid.replaceChildren();
    hits.forEach(function (hit) {
      const li = document.createElement("li");
      li.className = "tile";
      li.dataset.rank = String(hit.rank);
      const a = document.createElement("a");
      a.href = hit.image_url + "?full=true";
      a.setAttribute("aria-label", "rank " + hit.rank + ", score " + hit.score.toFixed(3) + ": " + fileName(hit));
      const img = document.createElement("img");
      img.src = hit.image_url;
      img.alt = "result " + hit.rank;
      img.loading = "lazy";
      const meta = document.createElement("span");
      meta.className = "meta";
      const rank = document.createElement("span");
      rank.className = "rank";
      rank.textContent = "#" + hit.rank;
      const score = document.createElement("span");
      score.className = "score";
      score.textContent = hit.score.toFixed(3);
      meta.append(rank, score);
      const name = document.createElement("span");
      name.className = "name";
      name.textContent = fileName(hit);
      name.title = String(hit.id);
      a.append(img, meta, name);
      li.append(a);
      grid.append(li);
    });
    setStatus(hits.length + " results for \u201c" + query + "\u201d");
  }

  async function search(query, k) {
    if (!query.trim()) { grid.replaceChildren(); setStatus(""); describeGallery(); return; }
    setStatus("searching\u2026");
    const url = "/search?" + new URLSearchParams({ q: query, k: String(k) });
    try {
      const response = await fetch(url, { headers: { accept: "application/json" } });
      const body = await response.json();
      if (!response.ok) { grid.replaceChildren(); setStatus(body.error || response.statusText, true); return; }
      render(body.results[0].query, body.results[0].results);
    } catch (err) {
      setStatus("the server did not answer: " + err, true);
    }
  }

  function fromUrl() {
    const params = new URLSearchParams(window.location.search);
    qInput.value = params.get("q") || "";
    if (params.get("k")) kInput.value = params.get("k");
    search(qInput.value, kInput.value || 10);
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    const params = new URLSearchParams({ q: qInput.value.trim(), k: kInput.value || "10" });
    window.history.pushState(null, "", "/?" + params);
    search(qInput.value, kInput.value || 10);
  });
  window.addEventListener("popstate", fromUrl);
  document.addEventListener("keydown", function (event) {
    if (event.key === "/" && document.activeElement !== qInput && document.activeElement !== kInput) {
      event.preventDefault();
      qInput.focus();
      qInput.select();
    }
  });
  fromUrl();
})();
