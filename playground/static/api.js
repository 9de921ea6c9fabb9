// Calls to the playground's own JSON API (the page never calls the Cog server: coglet sends no CORS
// headers). Every failure becomes one message a person can read.

export class PlaygroundDown extends Error {}

export async function call(path, options = {}) {
  let response;
  try {
    response = await fetch(path, options);
  } catch (error) {
    throw new PlaygroundDown(
      `The playground at ${location.origin} does not answer (${error.message}): is its process still running?`,
    );
  }
  let body = null;
  try {
    body = await response.json();
  } catch {
    // not JSON: the status line is all there is to say
  }
  if (!response.ok) throw new Error(body?.message || `the playground answered ${response.status} ${response.statusText}`);
  return body;
}

export function post(path, body = {}) {
  return call(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
}

export const sleep = (ms) => new Promise((done) => setTimeout(done, ms));
