/**
 * The tuning cache in a browser: IndexedDB database "kiln", object store "tuning", one text per
 * adapter signature id. Browser-only (it needs `indexedDB`); Node uses the file store of kiln-llm/node.
 */
import type { TuneStore } from './cache.js';

const DB = 'kiln';
const STORE = 'tuning';

function request<T>(r: IDBRequest<T>): Promise<T> {
  return new Promise((resolve, reject) => {
    r.onsuccess = () => resolve(r.result);
    r.onerror = () => reject(r.error ?? new Error('IndexedDB request failed'));
  });
}

export class IndexedDbTuneStore implements TuneStore {
  readonly where = `IndexedDB "${DB}/${STORE}"`;
  private db: Promise<IDBDatabase> | null = null;

  private open(): Promise<IDBDatabase> {
    const idb = (globalThis as { indexedDB?: IDBFactory }).indexedDB;
    if (!idb) return Promise.reject(new Error('IndexedDB is not available here'));
    this.db ??= new Promise((resolve, reject) => {
      const r = idb.open(DB, 1);
      r.onupgradeneeded = () => {
        if (!r.result.objectStoreNames.contains(STORE)) r.result.createObjectStore(STORE);
      };
      r.onsuccess = () => resolve(r.result);
      r.onerror = () => reject(r.error ?? new Error('IndexedDB open failed'));
    });
    return this.db;
  }

  async read(id: string): Promise<string | null> {
    const db = await this.open();
    const v: unknown = await request(db.transaction(STORE, 'readonly').objectStore(STORE).get(id));
    return typeof v === 'string' ? v : null;
  }

  async write(id: string, text: string): Promise<void> {
    const db = await this.open();
    await request(db.transaction(STORE, 'readwrite').objectStore(STORE).put(text, id));
  }
}
