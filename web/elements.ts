/**
 * The page's elements by id, typed: a missing one fails at start, not at first use.
 */
function el<T extends HTMLElement>(id: string, type: new () => T): T {
  const e = document.getElementById(id);
  if (!(e instanceof type)) throw new Error(`the page has no #${id}`);
  return e;
}

export const ui = {
  modelForm: el('model-form', HTMLFormElement),
  modelUrl: el('model-url', HTMLInputElement),
  load: el('load', HTMLButtonElement),
  openFolder: el('open-folder', HTMLButtonElement),
  folderInput: el('folder-input', HTMLInputElement),
  progress: el('progress', HTMLDivElement),
  progressFill: el('progress-fill', HTMLDivElement),
  progressText: el('progress-text', HTMLDivElement),
  modelInfo: el('model-info', HTMLElement),
  system: el('system', HTMLTextAreaElement),
  temperature: el('temperature', HTMLInputElement),
  temperatureValue: el('temperature-value', HTMLOutputElement),
  topP: el('top-p', HTMLInputElement),
  topPValue: el('top-p-value', HTMLOutputElement),
  maxTokens: el('max-tokens', HTMLInputElement),
  jsonMode: el('json-mode', HTMLInputElement),
  cacheInfo: el('cache-info', HTMLParagraphElement),
  clearCache: el('clear-cache', HTMLButtonElement),
  chatTitle: el('chat-title', HTMLDivElement),
  chatMode: el('chat-mode', HTMLDivElement),
  status: el('status', HTMLDivElement),
  newChat: el('new-chat', HTMLButtonElement),
  banner: el('banner', HTMLDivElement),
  bannerText: el('banner-text', HTMLSpanElement),
  reload: el('reload', HTMLButtonElement),
  messages: el('messages', HTMLDivElement),
  empty: el('empty', HTMLDivElement),
  composer: el('composer', HTMLFormElement),
  prompt: el('prompt', HTMLTextAreaElement),
  send: el('send', HTMLButtonElement),
  stop: el('stop', HTMLButtonElement),
  stats: el('stats', HTMLDivElement),
};
