// The page on the service's JSON API: /check_photo, /generate_upload, /status, /video, /jobs.
// No framework and nothing from a CDN: every byte comes from this service (deploy servers are often offline).
"use strict";

const TOKEN_KEY = "sadtalker-api-token";
const $ = (id) => document.getElementById(id);
let tokenPrompt = null; // one pending token dialog shared by concurrent 401s
let currentRequest = null;
let videoUrl = null;

function token() { return localStorage.getItem(TOKEN_KEY) || ""; }

function askToken(message) {
  if (!tokenPrompt) {
    tokenPrompt = new Promise((resolve) => {
      const dialog = $("token-dialog");
      $("token-error").textContent = message || "";
      $("token-input").value = "";
      $("token-form").onsubmit = (event) => {
        event.preventDefault();
        const value = $("token-input").value.trim();
        if (!value) return;
        localStorage.setItem(TOKEN_KEY, value);
        dialog.close();
        $("token-change").hidden = false;
        tokenPrompt = null;
        resolve();
      };
      dialog.showModal();
    });
  }
  return tokenPrompt;
}

// fetch with the token; on 401 ask for it (once, however many calls are waiting) and retry.
async function api(path, options = {}) {
  for (;;) {
    const headers = new Headers(options.headers || {});
    if (token()) headers.set("Authorization", "Bearer " + token());
    const response = await fetch(path, { ...options, headers });
    if (response.status !== 401) return response;
    await askToken(token() ? "That token was not accepted." : "");
  }
}

const postJson = (path, body) =>
  api(path, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });

async function errorOf(response) {
  try {
    const body = await response.json();
    if (body.detail && Array.isArray(body.detail)) {   // BentoML's schema errors
      const first = body.detail[0];
      return { field: String((first.loc || ["form"])[0]), message: first.msg };
    }
    return { field: body.field || "form", message: body.error || response.statusText };
  } catch (_) {
    return { field: "form", message: `${response.status} ${response.statusText}` };
  }
}

function clearErrors() {
  document.querySelectorAll(".field-error").forEach((node) => { if (node.id !== "token-error") node.textContent = ""; });
}

function showError(field, message) {
  const node = $("error-" + field) || $("error-form");
  node.textContent = message;
  const section = node.closest("details");  // an error inside the collapsed motion controls opens them
  if (section) section.open = true;
}

// -- picking files ---------------------------------------------------------------------------------------------

function wireDrop(zoneId, inputId, onFile) {
  const zone = $(zoneId);
  const input = $(inputId);
  const picked = (file) => {
    zone.querySelector(".hint").textContent = `${file.name} (${Math.ceil(file.size / 1024)} KiB): drop or click to change`;
    onFile(file);
  };
  input.addEventListener("change", () => { if (input.files.length) picked(input.files[0]); });
  zone.addEventListener("dragover", (event) => { event.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    if (event.dataTransfer.files.length) {
      input.files = event.dataTransfer.files;
      picked(input.files[0]);
    }
  });
}

async function checkPhoto(file) {
  const note = $("photo-check");
  note.className = "check";
  note.textContent = "Checking the photo…";
  const form = new FormData();
  form.append("source_image", file, file.name);
  try {
    const response = await api("/check_photo", { method: "POST", body: form });
    if (response.status === 503) { note.textContent = "Photo check unavailable on this server."; return; }
    if (!response.ok) {
      const error = await errorOf(response);
      note.className = "check warn";
      note.textContent = error.message;
      return;
    }
    const verdict = await response.json();
    note.className = "check " + (verdict.usable ? "ok" : "warn");
    note.textContent = (verdict.usable ? "✓ " : "⚠ ") + verdict.reason;
  } catch (error) {
    note.textContent = "Photo check failed: " + error;
  }
}

wireDrop("image-drop", "source_image", (file) => {
  const preview = $("image-preview");
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(file);
  preview.hidden = false;
  $("error-source_image").textContent = "";
  checkPhoto(file);
});
wireDrop("audio-drop", "driven_audio", (file) => {
  const preview = $("audio-preview");
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(file);
  preview.hidden = false;
  $("error-driven_audio").textContent = "";
});

// -- motion controls (optional; only the filled ones are sent) ----------------------------------------------------

const REFERENCE_VIDEOS = ["ref_eyeblink", "ref_pose"];
const ANGLE_FIELDS = ["input_yaw", "input_pitch", "input_roll"];

// "-20, 20" -> [-20, 20]; null when empty. The server checks count and range (±180°) and names the field.
function parseAngles(text) {
  const parts = text.split(/[\s,]+/).filter(Boolean);
  if (!parts.length) return null;
  return parts.map((part) => {
    const value = Number(part);
    if (!Number.isFinite(value)) throw new Error(`"${part}" is not a number of degrees; write e.g. -20, 20`);
    return value;
  });
}

// {field: JSON text} for the filled angle fields, or null after showing an error next to each bad one.
function angleFields() {
  const fields = {};
  let ok = true;
  for (const name of ANGLE_FIELDS) {
    try {
      const angles = parseAngles($(name).value);
      if (angles) fields[name] = JSON.stringify(angles);
    } catch (error) {
      showError(name, error.message);
      ok = false;
    }
  }
  return ok ? fields : null;
}

for (const name of [...REFERENCE_VIDEOS, ...ANGLE_FIELDS]) {
  const input = $(name);
  input.addEventListener(input.type === "file" ? "change" : "input", () => { $("error-" + name).textContent = ""; });
}

// -- submitting and following a job ----------------------------------------------------------------------------

function newRequestId() {
  const bytes = new Uint8Array(8);
  crypto.getRandomValues(bytes);
  return "web-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

$("generate-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  clearErrors();
  const image = $("source_image").files[0];
  const audio = $("driven_audio").files[0];
  if (!image) showError("source_image", "Pick a portrait photo.");
  if (!audio) showError("driven_audio", "Pick a speech recording.");
  const angles = angleFields();
  if (!image || !audio || !angles) return;
  const requestId = newRequestId();
  const form = new FormData();
  form.append("option", document.querySelector("input[name=option]:checked").value);
  form.append("request_id", requestId);
  form.append("source_image", image, image.name);
  form.append("driven_audio", audio, audio.name);
  for (const name of REFERENCE_VIDEOS) {
    const video = $(name).files[0];
    if (video) form.append(name, video, video.name);
  }
  for (const [name, text] of Object.entries(angles)) form.append(name, text);
  $("submit").disabled = true;
  try {
    const response = await api("/generate_upload", { method: "POST", body: form });
    if (!response.ok) {
      const error = await errorOf(response);
      showError(error.field, error.message);
      return;
    }
    follow(requestId);
  } catch (error) {
    showError("form", "Could not reach the server: " + error);
  } finally {
    $("submit").disabled = false;
  }
});

function describe(status) {
  if (status.state === "queued") {
    return status.queue_position ? `queued, position ${status.queue_position}` : "queued";
  }
  return status.state;
}

async function follow(requestId) {
  currentRequest = requestId;
  $("job").hidden = false;
  $("result-video").hidden = true;
  $("download").hidden = true;
  $("progress").value = 0;
  while (currentRequest === requestId) {
    let status;
    try {
      const response = await postJson("/status", { request_id: requestId });
      if (!response.ok) throw new Error((await errorOf(response)).message);
      status = await response.json();
    } catch (error) {
      $("state").textContent = "Lost contact with the server (" + error.message + "); retrying…";
      await new Promise((r) => setTimeout(r, 3000));
      continue;
    }
    $("state").textContent = describe(status);
    $("stage").textContent = status.stage && status.state === "running" ? `· ${status.stage}` : "";
    $("progress").value = status.progress;
    if (status.state === "completed") { await showVideo(requestId); refreshJobs(); return; }
    if (status.state === "failed") {
      $("state").textContent = "failed: " + (status.error || "unknown error");
      refreshJobs();
      return;
    }
    await new Promise((r) => setTimeout(r, 1000));
  }
}

async function showVideo(requestId) {
  // The video comes through fetch (with the token) as a blob: a <video src> could not send the header.
  const response = await api("/video?request_id=" + encodeURIComponent(requestId));
  if (!response.ok) { $("state").textContent = (await errorOf(response)).message; return; }
  const blob = await response.blob();
  if (videoUrl) URL.revokeObjectURL(videoUrl);
  videoUrl = URL.createObjectURL(new Blob([blob], { type: "video/mp4" }));
  const video = $("result-video");
  video.src = videoUrl;
  video.hidden = false;
  const link = $("download");
  link.href = videoUrl;
  link.download = requestId + ".mp4";
  link.hidden = false;
  $("state").textContent = "completed";
  $("progress").value = 100;
}

// -- recent jobs -----------------------------------------------------------------------------------------------

async function refreshJobs() {
  let jobs;
  try {
    const response = await postJson("/jobs", { limit: 10 });
    if (!response.ok) return;
    jobs = await response.json();
  } catch (_) { return; }
  const body = $("jobs");
  body.replaceChildren();
  for (const job of jobs) {
    const row = document.createElement("tr");
    row.className = job.state;
    const key = job.request_id || job.job_id;
    const cells = [key, describe(job), `${Math.round(job.progress)}%`, new Date(job.created_at * 1000).toLocaleString()];
    for (const text of cells) {
      const cell = document.createElement("td");
      cell.textContent = text;
      row.appendChild(cell);
    }
    if (job.state === "failed") { row.children[1].className = "failed"; row.children[1].title = job.error || ""; }
    if (job.state === "completed") row.children[0].addEventListener("click", () => follow(key));
    body.appendChild(row);
  }
}

$("token-change").addEventListener("click", () => askToken(""));
if (token()) $("token-change").hidden = false;
refreshJobs();
setInterval(refreshJobs, 5000);
