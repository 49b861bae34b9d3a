// "What to make": the profile picker (filled from GET /v1/profiles), the face target, quads and the extra files,
// and the job options they give (laid over the advanced JSON; the server lays those over the profile's).
import { listProfiles } from "./api.js";

const $ = (id) => document.getElementById(id);
let profiles = [];
let touched = false; // the person changed a field: a late profile list must not undo it

function chosenProfile() {
  return profiles.find((p) => p.name === $("profile").value);
}

function formatBoxes() {
  return [...document.querySelectorAll("input[name=format]")];
}

/** Show the chosen profile's description and its face target, quads and outputs in the fields. */
function showProfile() {
  const profile = chosenProfile();
  const effective = profile?.effective_options?.reconstruction ?? {};
  $("profile-description").textContent = profile?.description ?? "";
  $("faces").placeholder = effective.target_faces ? String(effective.target_faces) : "by ratio";
  $("faces").value = "";
  $("quads").checked = Boolean(effective.quad_remesh);
  const outputs = new Set(effective.outputs ?? []);
  for (const box of formatBoxes()) box.checked = outputs.has(box.value);
}

/** Fill the picker from the server; a failure (e.g. 401 before the token is given) keeps "standard". */
export async function loadProfiles() {
  try {
    profiles = await listProfiles();
  } catch {
    return;
  }
  const picker = $("profile");
  const chosen = picker.value;
  picker.replaceChildren(...profiles.map((p) => Object.assign(document.createElement("option"), {
    value: p.name, textContent: p.name,
  })));
  picker.value = profiles.some((p) => p.name === chosen) ? chosen : profiles[0]?.name ?? "standard";
  picker.dataset.loaded = "true";
  if (!touched) showProfile();
}

export function wireOutputs() {
  $("profile").addEventListener("change", () => {
    touched = false;
    showProfile();
  });
  for (const field of [$("faces"), $("quads"), ...formatBoxes()]) {
    field.addEventListener("input", () => { touched = true; });
  }
}

function sameSet(a, b) {
  return a.length === b.length && a.every((x) => b.includes(x));
}

/**
 * The options JSON to submit: the advanced JSON as typed when the fields above ask for nothing beyond the
 * standard profile (so the server judges it as sent), else parsed and given the profile and the fields that
 * differ from the profile's.
 */
export function optionsJson(advanced) {
  const profile = chosenProfile();
  const effective = profile?.effective_options?.reconstruction ?? {};
  const formats = formatBoxes().filter((b) => b.checked).map((b) => b.value);
  const profileFormats = (effective.outputs ?? []).filter((f) => formatBoxes().some((b) => b.value === f));
  const changes = {};
  if ($("faces").value) changes.target_faces = Number($("faces").value);
  if ($("quads").checked !== Boolean(effective.quad_remesh)) changes.quad_remesh = $("quads").checked;
  if (!sameSet(formats, profileFormats)) changes.outputs = formats;
  const name = $("profile").value;
  if ((!name || name === "standard") && Object.keys(changes).length === 0) return advanced;
  let options = {};
  if (advanced.trim()) {
    try {
      options = JSON.parse(advanced);
    } catch (error) {
      throw new Error(`The advanced options are not valid JSON: ${error.message}`);
    }
  }
  const reconstruction = { ...(options.reconstruction ?? {}), ...changes };
  if ("target_faces" in changes) delete reconstruction.simplify_ratio; // one face count
  return JSON.stringify({ ...options, profile: name, reconstruction });
}
