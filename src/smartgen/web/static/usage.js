// Usage: this month's jobs, tokens and cost (GET usage: the calendar month, UTC).

import { request } from "./api.js";

const $ = (id) => document.getElementById(id);

export async function loadUsage() {
  const [usage, byType] = await Promise.all([
    request("GET", "usage"),
    request("GET", "usage?groupBy=contentType"),
  ]);
  showTypes(byType.groups);
  const totals = usage.totals;
  $("usage-jobs").textContent = String(totals.jobs);
  $("usage-tokens").textContent = totals.totalTokens.toLocaleString("en");
  $("usage-cost").textContent = `$${totals.cost.toFixed(4)}`;
  const statuses = Object.entries(totals.byStatus).map(([status, count]) => {
    const li = document.createElement("li");
    li.textContent = `${status}: ${count}`;
    return li;
  });
  $("usage-status").replaceChildren(...statuses);
  const budget = usage.budget;
  const lines = [];
  if (budget && budget.tokens) lines.push(`${budget.tokens.left.toLocaleString("en")} of ${budget.tokens.limit.toLocaleString("en")} tokens left`);
  if (budget && budget.cost) lines.push(`$${budget.cost.left.toFixed(2)} of $${budget.cost.limit.toFixed(2)} left`);
  $("usage-budget").textContent = lines.length ? `This month's budget: ${lines.join("; ")}.` : "";
}

// One row per content type; the liked share where the API reports ratings.
function showTypes(groups) {
  const rated = groups.some((group) => "likedShare" in group);
  $("usage-liked-head").hidden = !rated;
  const rows = groups.map((group) => {
    const row = document.createElement("tr");
    const cells = [
      group.key ?? "—",
      String(group.jobs),
      group.totalTokens.toLocaleString("en"),
      `$${group.cost.toFixed(4)}`,
    ];
    if (rated) {
      cells.push(group.likedShare == null ? "—" : `${Math.round(group.likedShare * 100)} % (${group.liked + group.disliked})`);
    }
    for (const [i, text] of cells.entries()) {
      const cell = document.createElement(i === 0 ? "th" : "td");
      if (i === 0) cell.scope = "row";
      cell.textContent = text;
      row.append(cell);
    }
    return row;
  });
  $("usage-types").tBodies[0].replaceChildren(...rows);
}
