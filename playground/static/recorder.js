// Recording a melody in the browser (MediaRecorder), where the browser allows it: microphones need a
// secure context (https, or localhost as the playground is by default).

export function recorder(button, onDone) {
  if (!window.isSecureContext || !navigator.mediaDevices?.getUserMedia || !window.MediaRecorder) {
    button.disabled = true;
    button.title = "recording needs the page on https or on localhost, in a browser with a microphone";
    return;
  }
  let running = null;
  button.addEventListener("click", async () => {
    if (running) return running.stop();
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    } catch (error) {
      return onDone(null, `the browser gave no microphone (${error.message}); upload a file instead`);
    }
    const chunks = [];
    running = new MediaRecorder(stream);
    running.ondataavailable = (event) => chunks.push(event.data);
    running.onstop = () => {
      stream.getTracks().forEach((track) => track.stop());
      button.textContent = "Record";
      const type = running.mimeType;
      running = null;
      onDone(new Blob(chunks, { type }), null);
    };
    running.start();
    button.textContent = "Stop recording";
  });
}
