// A key the pages call with: taken from a sign-in link (`#token=...`, which `make run` prints) or
// typed in, and kept in localStorage under the page's own name (the downloads page keeps a tenant's
// key, the operator page an operator's). A URL fragment never reaches a server; it is also taken out
// of the address bar and the history at once.

import type { Interceptor } from "@connectrpc/connect";

export interface Credentials {
  token(): string;
  setToken(value: string): void;
  takeTokenFromLink(): void;
  withToken: Interceptor;
}

export function credentials(storageKey: string): Credentials {
  const token = () => localStorage.getItem(storageKey) ?? "";
  const setToken = (value: string) => {
    if (value) localStorage.setItem(storageKey, value);
    else localStorage.removeItem(storageKey);
  };
  return {
    token,
    setToken,
    takeTokenFromLink() {
      const match = /(?:^#|&)token=([^&]+)/.exec(location.hash);
      if (!match) return;
      setToken(decodeURIComponent(match[1]));
      history.replaceState(null, "", location.pathname + location.search);
    },
    withToken: (next) => async (request) => {
      const value = token();
      if (value) request.header.set("authorization", `Bearer ${value}`);
      return next(request);
    },
  };
}
