// voiceagent phone: Twilio's side of a ConversationRelay call, played by the browser.
//
// The server minted this page's call (CallSid and session token, in data-call). The page
// opens the relay socket, sends `setup` with the token in customParameters as Twilio does,
// then plays the caller: speech (SpeechRecognition) or typed text as `prompt` frames, keypad
// presses as `dtmf`, barge-in as `interrupt`. The agent's `text` tokens are shown as they
// stream and spoken with speechSynthesis. See docs/phone.md.
//
// What the caller "heard" when they barge in (utteranceUntilInterrupt): with working speech
// output, the text of the utterances that finished plus the current one up to the word its
// last boundary event named (or, for a voice without boundary events, up to where the time
// spoken says it is). Where speech output does not work (headless browsers have no voices,
// or "Speak replies" is off): every token received in the talk cycle so far, which is what
// voiceagent's Python caller reports.
(() => {
  "use strict";

  const $ = (id) => document.getElementById(id);
  const root = $("phone");
  const cfg = JSON.parse(root.dataset.call);
  const relay = cfg.relay || {};
  const loadedAt = Date.now();

  const CHARS_PER_SECOND = 14;        // about 150 words a minute: the estimate without boundaries
  const TWILIO_CLOSE_DELAY_MS = 90;   // Twilio closes the socket this long after `end`
  const FATAL_SYNTHESIS = ["synthesis-failed", "synthesis-unavailable", "audio-hardware",
                           "not-allowed", "language-unavailable", "voice-unavailable"];
  const QUIET_RECOGNITION = ["no-speech", "aborted"];

  const flag = (value, fallback) =>
    value === undefined || value === null ? fallback : String(value).toLowerCase() === "true";
  const subscriptions = `${relay.debug || ""} ${relay.events || ""}`.split(/\s+/);
  const sttLang = String(relay.transcriptionLanguage || relay.language || "en-US");
  let ttsLang = String(relay.ttsLanguage || relay.language || "en-US");
  let recognitionLang = sttLang;
  const settings = {
    interruptible: String(relay.interruptible ?? "any"),
    greetingInterruptible: String(relay.welcomeGreetingInterruptible ?? "any"),
    dtmf: flag(relay.dtmfDetection, false),
    partials: flag(relay.partialPrompts, false),
    speakerEvents: subscriptions.includes("speaker-events"),
    tokensPlayed: subscriptions.includes("tokens-played"),
  };

  const ui = {
    call: $("call"), hangUp: $("hang-up"), interrupt: $("interrupt"), speak: $("speak"),
    mic: $("mic"), status: $("status"), notes: $("notes"), transcript: $("transcript"),
    partial: $("partial"), form: $("say-form"), text: $("text"), say: $("say"),
    keypad: $("keypad"), end: $("call-end"), endReason: $("end-reason"),
    handoff: $("handoff"), handoffData: $("handoff-data"),
  };

  let ws = null;
  let state = "idle";                 // idle | connecting | live | ended
  let endedBy = null;                 // why the call ended, once it has
  let cycle = null;                   // the agent's current talk cycle
  let pendingTurn = null;             // {sentAt}: a turn sent, its first token not yet here
  let synthesisWorks = false;         // some utterance has started speaking on this page
  let synthesisBroken = null;         // why speech output cannot work here
  let recognition = null;
  let recognitionBroken = null;       // why speech input cannot work here
  let clientSpeaking = false;
  const notes = new Map();

  // ---------------------------------------------------------------- the page

  function note(key, text) {
    if (text) notes.set(key, text); else notes.delete(key);
    ui.notes.textContent = [...notes.values()].join(" ");
  }

  function setState(next, text) {
    state = next;
    ui.status.dataset.state = next;
    ui.status.textContent = text;
    refresh();
  }

  function refresh() {
    const live = state === "live";
    ui.call.disabled = state === "connecting" || state === "live";
    ui.call.textContent = state === "ended" ? "New call" : "Call";
    ui.hangUp.disabled = !(state === "connecting" || live);
    ui.interrupt.disabled = !(live && agentSpeaking());
    ui.text.disabled = !live;
    ui.say.disabled = !live;
    for (const key of ui.keypad.querySelectorAll("button")) key.disabled = !(live && settings.dtmf);
  }

  function entry(kind, who) {
    const item = document.createElement("li");
    item.className = kind;
    item.dataset.testid = `${kind}-turn`;
    if (who) {
      const label = document.createElement("span");
      label.className = "who";
      label.textContent = who;
      item.append(label);
    }
    const words = document.createElement("span");
    words.className = "words";
    words.dataset.testid = `${kind}-text`;
    item.append(words);
    ui.transcript.append(item);
    item.scrollIntoView({block: "nearest"});
    return {item, words};
  }

  function meta(item, testid, text) {
    let span = item.querySelector(`[data-testid="${testid}"]`);
    if (!span) {
      span = document.createElement("span");
      span.className = "meta";
      span.dataset.testid = testid;
      item.append(span);
    }
    span.textContent = text;
  }

  function event(text) {
    const {item, words} = entry("event", "");
    item.dataset.testid = "event";
    words.textContent = text;
  }

  function caller(text) {
    entry("caller", "Caller").words.textContent = text;
  }

  // ---------------------------------------------------------------- the socket

  function send(frame) {
    if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(frame));
  }

  function info(name, value) {
    send({type: "info", name, value, ts: Date.now()});
  }

  function start() {
    if (state === "ended" || Date.now() - loadedAt > (cfg.ticketTtlS - 5) * 1000) {
      location.reload();              // every page load is a new call with its own session
      return;
    }
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const url = new URL(`${scheme}//${location.host}${cfg.relayPath}`);
    url.searchParams.set(cfg.tokenParameter, cfg.sessionToken);
    setState("connecting", "Connecting…");
    ws = new WebSocket(url);
    ws.addEventListener("open", onOpen);
    ws.addEventListener("message", onMessage);
    ws.addEventListener("close", onClose);
    primeSpeech();
  }

  function onOpen() {
    send({
      type: "setup", sessionId: `VX${hex(16)}`, accountSid: cfg.accountSid, parentCallSid: "",
      callSid: cfg.callSid, from: cfg.from, to: cfg.to, forwardedFrom: "", callType: "PSTN",
      callerName: "", direction: "inbound", callStatus: "RINGING",
      customParameters: {[cfg.tokenParameter]: cfg.sessionToken},
    });
    setState("live", "In call");
    if (cfg.greeting) {               // Twilio speaks welcomeGreeting itself
      cycle = newCycle(settings.greetingInterruptible, "greeting");
      receive(cfg.greeting, true);
    }
    listen();
  }

  function onMessage(message) {
    let frame;
    try {
      frame = JSON.parse(message.data);
    } catch {
      event("The server sent a frame that is not JSON.");
      return;
    }
    switch (frame.type) {
      case "text": return onText(frame);
      case "end": return onEnd(frame);
      case "play": return event(`The agent plays ${frame.source} (not played here).`);
      case "sendDigits": return event(`The agent sends the digits ${frame.digits}.`);
      case "language": return onLanguage(frame);
      case "config": return event(`The agent changes the session's settings: ${clip(JSON.stringify(frame), 160)}`);
      case "hints": return event(`The agent sends speech hints: ${clip(String(frame.hints), 80)}`);
      default: return event(`Unknown frame from the server: ${String(frame.type)}`);
    }
  }

  function onClose(closed) {
    const why = endedBy || (closed.code === 1000 ? "The call ended."
      : `The server closed the call (code ${closed.code}${closed.reason ? `: ${closed.reason}` : ""}).`);
    finish(why);
  }

  function finish(why) {
    if (state === "ended") return;
    stopSpeaking();
    stopListening();
    cycle = null;
    ui.partial.textContent = "";
    ui.end.hidden = false;
    ui.endReason.textContent = why;
    setState("ended", why);
  }

  function hangUp() {
    endedBy = "You hung up.";
    if (ws && ws.readyState <= WebSocket.OPEN) ws.close(1000, "Closing websocket session");
    finish(endedBy);
  }

  function onEnd(frame) {
    endedBy = "The agent ended the call.";
    const data = frame.handoffData;
    ui.handoff.hidden = false;
    if (data === undefined || data === null || data === "") {
      ui.handoffData.textContent = "(none)";
    } else {
      try {
        ui.handoffData.textContent = JSON.stringify(JSON.parse(data), null, 2);
      } catch {
        ui.handoffData.textContent = String(data);
      }
    }
    event("The agent ended the call (end).");
    setTimeout(() => ws && ws.close(1000, "Session ended"), TWILIO_CLOSE_DELAY_MS);
  }

  function onLanguage(frame) {
    if (frame.ttsLanguage) ttsLang = String(frame.ttsLanguage);
    if (frame.transcriptionLanguage) {
      recognitionLang = String(frame.transcriptionLanguage);
      if (recognition) recognition.lang = recognitionLang;
    }
    event(`The agent switches language: speech ${ttsLang}, transcription ${recognitionLang}.`);
  }

  // ---------------------------------------------------------------- the agent speaking

  function newCycle(interruptible, kind) {
    const view = entry("agent", "Agent");
    if (kind) view.item.dataset.kind = kind;
    return {
      received: "", queued: "", spoken: "", open: true, cut: false, discarding: false,
      interruptible, lang: ttsLang, startedAt: performance.now(), playingSince: null,
      utterances: [], view,
    };
  }

  function onText(frame) {
    const token = typeof frame.token === "string" ? frame.token : "";
    if (cycle && cycle.discarding) {  // Twilio drops what was queued when the caller cut in
      if (frame.last) cycle.discarding = cycle.open = false;
      return;
    }
    if (!cycle || !cycle.open) {
      if (!token) return;
      cycle = newCycle(settings.interruptible);
    }
    if (typeof frame.interruptible === "boolean") {
      cycle.interruptible = frame.interruptible ? "any" : "none";
    }
    if (frame.lang) cycle.lang = String(frame.lang);
    if (token && pendingTurn) {
      const ms = Math.round(performance.now() - pendingTurn.sentAt);
      meta(cycle.view.item, "latency", `first word after ${ms} ms`);
      cycle.view.item.dataset.latencyMs = String(ms);
      pendingTurn = null;
    }
    receive(token, Boolean(frame.last));
  }

  function receive(token, last) {
    const c = cycle;
    c.received += token;
    c.queued += token;
    c.view.words.textContent = c.received;
    if (last) c.open = false;
    speakQueued(c, last);
    refresh();
  }

  function speechOn() {
    return ui.speak.checked && "speechSynthesis" in window && !synthesisBroken;
  }

  function speakQueued(c, all) {
    if (!speechOn()) {
      c.queued = "";
      return;
    }
    // whole clauses go to the voice, so it speaks while the reply streams
    const clause = all ? c.queued.length : lastClauseEnd(c.queued);
    const text = c.queued.slice(0, clause);
    if (!text.trim()) {
      if (all) c.queued = "";
      return;
    }
    c.queued = c.queued.slice(clause);
    const spoken = {text, started: false, done: false, startedAt: 0, word: null, c};
    const utterance = new SpeechSynthesisUtterance(text);
    spoken.utterance = utterance;     // Chrome drops events of utterances nobody holds
    utterance.lang = c.lang || ttsLang;
    utterance.addEventListener("start", () => {
      spoken.started = true;
      spoken.startedAt = performance.now();
      synthesisWorks = true;
      if (c.playingSince === null) {
        c.playingSince = spoken.startedAt;
        if (settings.speakerEvents && !c.cut) info("agentSpeaking", "on");
      }
    });
    utterance.addEventListener("boundary", (e) => {
      if (e.name === undefined || e.name === "word") spoken.word = e.charIndex;
    });
    utterance.addEventListener("end", () => spokenOut(spoken, null));
    utterance.addEventListener("error", (e) => spokenOut(spoken, e.error));
    c.utterances.push(spoken);
    window.speechSynthesis.speak(utterance);
  }

  function lastClauseEnd(text) {
    const match = /^[\s\S]*[.!?;:,](?=\s)/.exec(text);
    return match ? match[0].length : 0;
  }

  function spokenOut(spoken, error) {
    if (spoken.done) return;
    spoken.done = true;
    const c = spoken.c;
    if (error && FATAL_SYNTHESIS.includes(error)) {
      synthesisBroken = error;
      note("voice", `Speech output is not available here (${error}): replies are shown, not spoken.`);
    } else if (!error && !c.cut) {
      c.spoken += spoken.text;
      if (settings.tokensPlayed) info("tokensPlayed", spoken.text);
    }
    if (!c.cut && !c.open && c.utterances.every((u) => u.done)) {
      if (settings.speakerEvents && c.playingSince !== null) info("agentSpeaking", "off");
    }
    refresh();
  }

  function agentSpeaking() {
    const c = cycle;
    if (!c || c.cut) return false;
    if (c.open) return true;
    return speechOn() && c.utterances.some((u) => !u.done);
  }

  // What the caller has heard of this talk cycle (see the top of this file).
  function heard(c) {
    if (!speechOn() || !synthesisWorks) return c.received;
    let text = c.spoken;
    const now = c.utterances.find((u) => u.started && !u.done);
    if (now) {
      const at = now.word !== null ? now.word
        : Math.floor((performance.now() - now.startedAt) / 1000 * CHARS_PER_SECOND);
      text += now.text.slice(0, wordEnd(now.text, at));
    }
    return text;
  }

  function wordEnd(text, at) {
    if (at >= text.length) return text.length;
    const gap = text.slice(at).search(/\s/);
    return gap < 0 ? text.length : at + gap;
  }

  // Barge-in: stop speaking, tell the server what was heard, drop what is still coming.
  function interrupt(how) {
    const c = cycle;
    if (state !== "live" || !agentSpeaking()) return;
    const words = heard(c);
    const duration = Math.max(0, Math.round(performance.now() - (c.playingSince ?? c.startedAt)));
    send({type: "interrupt", utteranceUntilInterrupt: words,
          durationUntilInterruptMs: duration});
    c.cut = true;
    c.discarding = c.open;
    c.queued = "";
    stopSpeaking();
    if (settings.speakerEvents && c.playingSince !== null) info("agentSpeaking", "off");
    const {item, words: view} = c.view;
    item.classList.add("interrupted");
    view.textContent = "";
    const kept = document.createElement("span");
    kept.dataset.testid = "heard";
    kept.textContent = words;
    const lost = document.createElement("del");
    lost.dataset.testid = "unheard";
    lost.textContent = c.received.slice(words.length);
    view.append(kept, lost);
    meta(item, "interrupted", `cut off by ${how} after ${duration} ms`);
    refresh();
  }

  function bargeIn(how) {
    if (cycle && agentSpeaking() && allows(cycle.interruptible, how)) interrupt(how);
  }

  function allows(setting, how) {
    const value = String(setting).toLowerCase();
    if (value === "any" || value === "true") return true;
    if (value === "none" || value === "false") return false;
    return value === how;
  }

  function stopSpeaking() {
    if ("speechSynthesis" in window) window.speechSynthesis.cancel();
  }

  // Browsers let a page speak only after a user gesture: say nothing, once, on the Call click.
  function primeSpeech() {
    if (!speechOn()) return;
    const silence = new SpeechSynthesisUtterance("");
    window.speechSynthesis.speak(silence);
  }

  // ---------------------------------------------------------------- the caller

  function say(text, lang) {
    bargeIn("speech");
    send({type: "prompt", voicePrompt: text, lang, last: true});
    caller(text);
    pendingTurn = {sentAt: performance.now()};
    refresh();
  }

  function press(key) {
    if (state !== "live" || !settings.dtmf) return;
    bargeIn("dtmf");
    send({type: "dtmf", digit: key});
    const view = entry("caller", "Caller");
    view.item.dataset.testid = "keypress";
    view.words.textContent = `pressed ${key}`;
    pendingTurn = {sentAt: performance.now()};
  }

  function listen() {
    const Recognition = window.SpeechRecognition || window.webkitSpeechRecognition;
    if (!Recognition) {
      recognitionBroken = "unsupported";
      note("mic", "This browser has no speech recognition: type what the caller says.");
      return;
    }
    if (state !== "live" || !ui.mic.checked || recognitionBroken || recognition) return;
    const r = new Recognition();
    recognition = r;
    r.lang = recognitionLang;
    r.continuous = true;
    r.interimResults = true;
    r.maxAlternatives = 1;
    r.addEventListener("speechstart", () => {
      speaking(true);
      bargeIn("speech");
    });
    r.addEventListener("speechend", () => speaking(false));
    r.addEventListener("result", (e) => {
      let partial = "";
      for (let i = e.resultIndex; i < e.results.length; i += 1) {
        const text = e.results[i][0].transcript.trim();
        if (e.results[i].isFinal) {
          if (text) say(text, r.lang);
          partial = "";
        } else {
          partial = `${partial} ${text}`.trim();
        }
      }
      ui.partial.textContent = partial;
      if (partial) {
        bargeIn("speech");
        if (settings.partials) send({type: "prompt", voicePrompt: partial, lang: r.lang, last: false});
      }
    });
    r.addEventListener("error", (e) => {
      if (QUIET_RECOGNITION.includes(e.error)) return;
      recognitionBroken = e.error;
      note("mic", `Speech input is not available here (${e.error}): type what the caller says.`);
    });
    r.addEventListener("end", () => {
      if (recognition !== null && recognition !== r) return;   // an old one, aborted: a newer listens
      recognition = null;
      speaking(false);
      if (state === "live" && ui.mic.checked && !recognitionBroken) setTimeout(listen, 250);
    });
    try {
      r.start();
      note("mic", `Listening (${r.lang}); headphones keep the agent's voice out of the microphone.`);
    } catch (err) {
      recognition = null;
      recognitionBroken = String(err);
      note("mic", `Speech input could not start (${err}): type what the caller says.`);
    }
  }

  function stopListening() {
    if (recognition) {
      const r = recognition;
      recognition = null;
      r.abort();
    }
  }

  function speaking(on) {
    if (on === clientSpeaking) return;
    clientSpeaking = on;
    if (settings.speakerEvents) info("clientSpeaking", on ? "on" : "off");
  }

  // ---------------------------------------------------------------- wiring

  function clip(text, length) {
    return text.length > length ? `${text.slice(0, length - 1)}…` : text;
  }

  function hex(bytes) {
    const values = crypto.getRandomValues(new Uint8Array(bytes));
    return [...values].map((v) => v.toString(16).padStart(2, "0")).join("");
  }

  ui.call.addEventListener("click", start);
  ui.hangUp.addEventListener("click", hangUp);
  ui.interrupt.addEventListener("click", () => interrupt("the interrupt button"));
  ui.form.addEventListener("submit", (e) => {
    e.preventDefault();
    const text = ui.text.value.trim();
    if (!text || state !== "live") return;
    ui.text.value = "";
    say(text, recognitionLang);
  });
  ui.keypad.addEventListener("click", (e) => {
    const key = e.target.closest("button[data-key]");
    if (key) press(key.dataset.key);
  });
  document.addEventListener("keydown", (e) => {
    if (e.target === ui.text || e.ctrlKey || e.metaKey || e.altKey) return;
    if (/^[0-9*#]$/.test(e.key)) press(e.key);
  });
  ui.speak.addEventListener("change", () => {
    if (!ui.speak.checked) stopSpeaking();
    refresh();
  });
  ui.mic.addEventListener("change", () => {
    if (ui.mic.checked) listen(); else stopListening();
  });
  window.addEventListener("pagehide", () => {
    if (ws && ws.readyState <= WebSocket.OPEN) ws.close(1000, "Closing websocket session");
  });

  $("call-sid").textContent = cfg.callSid;
  $("from").textContent = cfg.from;
  $("to").textContent = cfg.to;
  $("use-case").textContent = cfg.useCase;
  if (!settings.dtmf) note("dtmf", "This use case has dtmfDetection off: Twilio would send no keys.");
  if (!("speechSynthesis" in window)) {
    synthesisBroken = "unsupported";
    note("voice", "This browser cannot speak: replies are shown, not spoken.");
  }
  refresh();
})();
