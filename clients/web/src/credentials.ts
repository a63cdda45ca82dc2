// The API key the page calls with: taken from a sign-in link (`#token=...`, which `make run` prints)
// or typed in, and kept in localStorage. A URL fragment never reaches a server; it is also taken
// out of the address bar and the history at once.

import type { Interceptor } from "@connectrpc/connect";

const KEY = "longhaul.token.v1";

export function token(): string {
  return localStorage.getItem(KEY) ?? "";
}

export function setToken(value: string): void {
  if (value) localStorage.setItem(KEY, value);
  else localStorage.removeItem(KEY);
}

export function takeTokenFromLink(): void {
  const match = /(?:^#|&)token=([^&]+)/.exec(location.hash);
  if (!match) return;
  setToken(decodeURIComponent(match[1]));
  history.replaceState(null, "", location.pathname + location.search);
}

export const withToken: Interceptor = (next) => async (request) => {
  const value = token();
  if (value) request.header.set("authorization", `Bearer ${value}`);
  return next(request);
};
