// The public REST API (contract §1 and §8), nothing else: what any MinitalkChat client can do.

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export class Api {
  constructor(token = null, onUnauthorized = () => {}) {
    this.token = token;
    this.onUnauthorized = onUnauthorized;
  }

  async request(method, path, body) {
    const headers = {};
    if (this.token) headers.Authorization = `Bearer ${this.token}`;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let response;
    try {
      response = await fetch(`/api${path}`, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch {
      throw new ApiError(0, "The server cannot be reached");
    }
    let data = null;
    try {
      data = await response.json();
    } catch {
      data = null;
    }
    if (!response.ok) {
      // As the original frontend: a 401 on an authenticated call means the token is gone (§5.2).
      if (response.status === 401 && this.token) this.onUnauthorized();
      throw new ApiError(response.status, (data && data.error) || `${response.status} ${response.statusText}`);
    }
    return data;
  }

  signup(username, password) {
    return this.request("POST", "/auth/signup", { username, password });
  }

  login(username, password) {
    return this.request("POST", "/auth/login", { username, password });
  }

  rooms() {
    return this.request("GET", "/chatrooms");
  }

  createRoom(name, participants) {
    return this.request("POST", "/chatrooms", { name, participants });
  }

  invite(roomId, participants) {
    return this.request("POST", `/chatrooms/${encodeURIComponent(roomId)}/invite`, { participants });
  }

  leave(roomId) {
    return this.request("POST", `/chatrooms/${encodeURIComponent(roomId)}/leave`);
  }

  // History (§8): newest `limit` without a cursor; after_seq pages forward, before_seq backward.
  history(roomId, params = {}) {
    const query = new URLSearchParams({ limit: "100", ...params });
    return this.request("GET", `/chatrooms/${encodeURIComponent(roomId)}/messages?${query}`);
  }
}
