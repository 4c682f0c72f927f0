// The webcam page of fer-serve: the camera's frames are sent to POST /analyze at a steady rate (a frame is skipped
// while the previous one is still being analysed, so requests never pile up), and the faces are drawn over the video.
"use strict";

const FRAMES_PER_SECOND = 5;
const JPEG_QUALITY = 0.85;
const video = document.getElementById("video");
const overlay = document.getElementById("overlay");
const statusLine = document.getElementById("status");
const faceList = document.getElementById("faces");
const grab = document.createElement("canvas");
let inFlight = false;

async function showModel() {
  try {
    const health = await (await fetch("/health")).json();
    document.getElementById("model").textContent =
      `model ${health.model} (${health.classes.join(", ")}) on ${health.provider}`;
  } catch (err) {
    document.getElementById("model").textContent = `fer-serve did not answer /health: ${err}`;
  }
}

async function startCamera() {
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    statusLine.textContent = "this browser gives no camera here (open the page on localhost, or over https)";
    return;
  }
  try {
    video.srcObject = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 }, audio: false });
    await video.play();
  } catch (err) {
    statusLine.textContent = `no camera: ${err.name} ${err.message}`;
    return;
  }
  setInterval(sendFrame, 1000 / FRAMES_PER_SECOND);
}

async function sendFrame() {
  if (inFlight || video.readyState < 2 || !video.videoWidth) return;
  inFlight = true;
  const width = video.videoWidth, height = video.videoHeight;
  grab.width = width;
  grab.height = height;
  grab.getContext("2d").drawImage(video, 0, 0, width, height);
  const started = performance.now();
  try {
    const jpeg = await new Promise((resolve) => grab.toBlob(resolve, "image/jpeg", JPEG_QUALITY));
    const answer = await fetch("/analyze", { method: "POST", body: jpeg, headers: { "Content-Type": "image/jpeg" } });
    const body = await answer.json();
    if (answer.ok) draw(body, width, height, performance.now() - started);
    else statusLine.textContent = `${answer.status}: ${body.error}`;
  } catch (err) {
    statusLine.textContent = `fer-serve did not answer: ${err}`;
  } finally {
    inFlight = false;
  }
}

function draw(faces, width, height, ms) {
  overlay.width = video.clientWidth;
  overlay.height = video.clientHeight;
  const sx = overlay.width / width, sy = overlay.height / height;
  const ctx = overlay.getContext("2d");
  ctx.clearRect(0, 0, overlay.width, overlay.height);
  ctx.lineWidth = 3;
  ctx.font = "bold 18px system-ui, sans-serif";
  const items = [];
  for (const face of faces) {
    const [x, y, w, h] = face.box;
    const label = `${face.dominant_emotion} ${(100 * face.confidence).toFixed(0)}%`;
    ctx.strokeStyle = "#35e06b";
    ctx.strokeRect(x * sx, y * sy, w * sx, h * sy);
    const textWidth = ctx.measureText(label).width;
    const top = Math.max(0, y * sy - 24);
    ctx.fillStyle = "rgba(0, 0, 0, 0.65)";
    ctx.fillRect(x * sx, top, textWidth + 10, 24);
    ctx.fillStyle = "#fff";
    ctx.fillText(label, x * sx + 5, top + 18);
    const item = document.createElement("li");
    item.className = "face";
    item.dataset.label = face.dominant_emotion;
    item.dataset.confidence = face.confidence.toFixed(3);
    item.dataset.box = face.box.join(",");
    item.textContent = `${label} at [${face.box.join(", ")}]`;
    items.push(item);
  }
  faceList.replaceChildren(...items);
  statusLine.textContent = `${faces.length} face${faces.length === 1 ? "" : "s"}, ${ms.toFixed(0)} ms a frame`;
}

showModel();
startCamera();
